"""lavislike.models.image_encoders."""
