"""Image encoders: frozen (or not) vision towers registered in ``IMAGE_ENCODERS``.

Registered names: ``eva_vit`` (any EVA / BLIP-2 ViT size), ``eva_clip_g`` (EVA-CLIP
ViT-g/14, 39 blocks, width 1408), ``eva_vit_tiny``, ``clip_vit`` (any CLIP ViT size),
``clip_L`` (CLIP ViT-L/14, 23 of 24 blocks, width 1024), ``clip_vit_tiny``, and ``timm``
(any timm model by name).

API the composition uses::

    cls = IMAGE_ENCODERS.get(block.name)
    encoder = cls.from_config(block)          # build -> load `pretrained` -> precision -> freeze
    feats = encoder(images)                   # (B, tokens, encoder.num_features), BEFORE ln_vision,
                                              # in the encoder's dtype; no autograd when frozen
    encoder.num_features                      # C, the width ln_vision normalises
    sd = encoder.convert_lavis_state_dict(lavis_sd)   # keys with or without "visual_encoder."
    sd = encoder.convert_hf_state_dict(hf_sd)         # keys with or without "vision_model.";
                                                      # post_layernorm dropped (-> ln_vision)
    sd = encoder.convert_any_state_dict(any_sd)       # lavislike / HF / LAVIS, detected
    encoder.load_converted(sd, source)                # load_state_dict, CheckpointError by name
    encoder.to_hf_state_dict(prefix="vision_model.")  # Blip2VisionModel keys, no post_layernorm
    encoder.to_lavis_state_dict(prefix="visual_encoder.")
    encoder.hf_vision_config()                        # Blip2VisionConfig kwargs
    EvaViT.from_hf_config(blip2_vision_config, precision=..., freeze=...)

All converters resize position embeddings to the encoder's ``image_size`` (bicubic, as
LAVIS) and raise :class:`lavislike.errors.CheckpointError` on unknown keys; encoders
without an HF equivalent (CLIP, timm) raise it from ``to_hf_state_dict``.
Freezing and precision live in :mod:`lavislike.models.freezing`.
"""
from lavislike.models.image_encoders import clip_vit, eva_vit, timm_encoder  # noqa: F401  (registration)
from lavislike.models.image_encoders.base import ImageEncoder, ImageEncoderConfig, resize_pos_embed
from lavislike.models.image_encoders.clip_vit import ClipL, ClipViT
from lavislike.models.image_encoders.eva_vit import EvaClipG, EvaViT
from lavislike.models.image_encoders.timm_encoder import TimmEncoder

__all__ = [
    "ClipL",
    "ClipViT",
    "EvaClipG",
    "EvaViT",
    "ImageEncoder",
    "ImageEncoderConfig",
    "TimmEncoder",
    "resize_pos_embed",
]
