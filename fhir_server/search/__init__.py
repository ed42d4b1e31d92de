"""Search: the parameter registry, index extraction, and the search engine over the index tables."""
