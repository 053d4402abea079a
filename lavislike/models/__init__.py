"""lavislike.models."""
