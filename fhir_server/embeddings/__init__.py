"""Embeddings: text of resources in chunks, turned into vectors by a provider, stored for $semantic-search."""
