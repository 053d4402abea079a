"""lavislike.datasets."""
