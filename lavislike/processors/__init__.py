"""lavislike.processors."""
