"""lavislike.config."""
