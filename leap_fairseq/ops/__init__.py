"""Linear-attention math on feature-mapped queries and keys, with naive references."""
