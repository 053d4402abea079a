"""lavislike.models.convert."""
