"""Examples of a task and an algorithm defined outside the gossip package (see docs/extending.md)."""
