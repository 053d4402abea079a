"""lavislike.processors: image, text and video transforms, registered in ``PROCESSORS``."""
from lavislike.processors import image, text, video  # noqa: F401  (register)
from lavislike.processors.base import CLIP_MEAN, CLIP_STD, build_processor, processor_config

__all__ = ["CLIP_MEAN", "CLIP_STD", "build_processor", "processor_config"]
