"""lavislike.tasks."""
