"""A character-level transformer, a task defined outside the gossip package."""
