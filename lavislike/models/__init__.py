"""lavislike.models: the public model API and the modules that register models.

Example:
    >>> from lavislike.models import load_model_and_preprocess
    >>> model, vis, txt = load_model_and_preprocess("blip2_feature_extractor", "pretrain",
    ...                                             is_eval=True, device="cuda")
"""
from lavislike.models import image_encoders, llms  # noqa: F401  (register)
from lavislike.models import blip2  # noqa: F401  (register)
from lavislike.models import blip2_llm  # noqa: F401  (register blip2_opt, blip2_t5)
from lavislike.models.convert.from_hf import from_hf
from lavislike.models.loading import (
    build_model,
    load_model,
    load_model_and_preprocess,
    load_preprocess,
    save_pretrained,
)


def model_zoo() -> str:
    """A printable table of the registered models and their types."""
    from lavislike.zoo import zoo_text

    return zoo_text("models")


__all__ = [
    "build_model",
    "from_hf",
    "load_model",
    "load_model_and_preprocess",
    "load_preprocess",
    "model_zoo",
    "save_pretrained",
]
