"""lavislike.runners."""
