"""lavislike.models.llms."""
