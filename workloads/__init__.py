"""What runs inside sandboxes, and the parsers of what comes back."""
