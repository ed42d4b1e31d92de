"""The SMART App Launch 2.x / Backend Services authorization server: clients, users, keys, tokens, pages."""
