"""Evidence records, the matrix, its diff and gate, and renderers."""
