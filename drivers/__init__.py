"""Driver adapters and the shared request model."""
