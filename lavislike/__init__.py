"""lavislike: BLIP-2-style vision-language pre-training with swappable parts.

Example:
    >>> from lavislike.models import load_model_and_preprocess
    >>> model, vis, txt = load_model_and_preprocess("blip2_opt", "pretrain_opt2.7b")
"""
__version__ = "0.1.0"
