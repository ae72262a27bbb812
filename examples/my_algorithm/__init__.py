"""D-PSGD with a mixing step size, an algorithm defined outside the gossip package."""
