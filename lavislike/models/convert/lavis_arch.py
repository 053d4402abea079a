"""The architecture a LAVIS ``.pth`` implies, read from its tensor shapes.

A LAVIS checkpoint stores no config, but its shapes fix most sizes: the EVA ViT's width,
depth, patch, MLP width and (from the position embedding) image size; the Q-Former's
width, layers, cross-attention layers, queries, FFN width, vocabulary and positions; the
ITC width. :func:`lavis_arch` returns them as our config keys; :func:`contradictions`
lists the config values that disagree with them. Attention head counts and dropout are
not in the shapes (LAVIS's Q-Former is BERT-base: 12 heads, dropout 0.1; its ViT-g has 16
heads) and stay as configured.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional

import torch

_QLAYER = re.compile(r"Qformer\.bert\.encoder\.layer\.(\d+)\.")
_QCROSS = re.compile(r"Qformer\.bert\.encoder\.layer\.(\d+)\.crossattention\.")
_VBLOCK = re.compile(r"visual_encoder\.blocks\.(\d+)\.")
# the only encoder whose sizes are all config keys; presets fix theirs (ViTEncoder.ARCH)
_SIZED_ENCODER = "eva_vit"


def _shape(state: Mapping[str, torch.Tensor], key: str) -> Optional[tuple[int, ...]]:
    value = state.get(key)
    return tuple(value.shape) if value is not None else None


def _qformer(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    queries = _shape(state, "query_tokens")
    if queries is not None and len(queries) == 3:
        out["num_query_token"], out["hidden_size"] = queries[1], queries[2]
    layers = sorted({int(m.group(1)) for k in state if (m := _QLAYER.match(k))})
    if layers:
        out["num_hidden_layers"] = layers[-1] + 1
        cross = sorted({int(m.group(1)) for k in state if (m := _QCROSS.match(k))})
        if cross:
            # cross-attention in layers 0, f, 2f, ...: one such layer means f >= depth
            out["cross_attention_freq"] = cross[1] - cross[0] if len(cross) > 1 else layers[-1] + 1
            key = f"Qformer.bert.encoder.layer.{cross[0]}.crossattention.self.key.weight"
            if _shape(state, key) is not None:
                out["encoder_width"] = _shape(state, key)[1]
        ffn = _shape(state, f"Qformer.bert.encoder.layer.{layers[0]}.intermediate_query.dense.weight")
        if ffn is not None:
            out["intermediate_size"] = ffn[0]
    words = _shape(state, "Qformer.bert.embeddings.word_embeddings.weight")
    if words is not None:
        out["vocab_size"] = words[0]
    positions = _shape(state, "Qformer.bert.embeddings.position_embeddings.weight")
    if positions is not None:
        out["max_position_embeddings"] = positions[0]
    return out


def _eva(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """EVA ViT sizes (LAVIS ``eva_vit.py`` layout) when the file holds the encoder."""
    patch = _shape(state, "visual_encoder.patch_embed.proj.weight")
    pos = _shape(state, "visual_encoder.pos_embed")
    if patch is None or pos is None:
        return {}
    out = {"width": patch[0], "patch_size": patch[-1]}
    side = math.isqrt(pos[1] - 1)
    if side * side == pos[1] - 1:
        out["image_size"] = side * patch[-1]
    blocks = sorted({int(m.group(1)) for k in state if (m := _VBLOCK.match(k))})
    if blocks:
        out["depth"] = blocks[-1] + 1
        mlp = _shape(state, f"visual_encoder.blocks.{blocks[0]}.mlp.fc1.weight")
        if mlp is not None:
            out["mlp_dim"] = mlp[0]
    return out


def lavis_arch(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Our config keys (nested as in the ``model`` block) that the shapes of a LAVIS
    state dict fix; the image encoder's under ``image_encoder`` (EVA layout only)."""
    out: dict[str, Any] = {}
    qformer = _qformer(state)
    if qformer:
        out["qformer"] = qformer
    encoder = _eva(state)
    if encoder:
        out["image_encoder"] = encoder
    proj = _shape(state, "vision_proj.weight")
    if proj is not None:
        out["embed_dim"] = proj[0]
    norm = _shape(state, "ln_vision.weight")
    if norm is not None and "encoder_width" not in qformer:
        out.setdefault("qformer", {})["encoder_width"] = norm[0]
    return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def encoder_widths(cfg: Any) -> tuple[Optional[int], Optional[int]]:
    """``(configured encoder width, configured Q-Former encoder_width)`` of a model config."""
    from lavislike.registry import IMAGE_ENCODERS

    enc = cfg.get("image_encoder")
    if enc is None or "name" not in enc:
        return None, None
    cls = IMAGE_ENCODERS.get(enc.name)
    width = getattr(cls, "ARCH", {}).get("width", enc.get("width"))
    return width, cfg.qformer.get("encoder_width")


def fit_to_config(implied: dict[str, Any], cfg: Any, encoder_name: Optional[str] = None) -> dict[str, Any]:
    """The implied keys ``cfg`` has, as config values: encoder sizes only for ``eva_vit``
    (presets fix theirs: their sizes are checked, not set), ``encoder_width`` only where the
    encoder's own width does not already give it, ``embed_dim`` only for stage 1."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in implied.items()}
    enc = cfg.get("image_encoder")
    enc_sizes = out.pop("image_encoder", {})
    if encoder_name is None and enc is not None and "name" in enc:
        encoder_name = enc.name
    if encoder_name is not None:
        if encoder_name == _SIZED_ENCODER:
            out["image_encoder"] = enc_sizes
        elif "image_size" in enc_sizes:
            out["image_encoder"] = {"image_size": enc_sizes["image_size"]}
    # the image feature width is the encoder's business (checked by contradictions)
    out.get("qformer", {}).pop("encoder_width", None)
    if "embed_dim" in out and "embed_dim" not in cfg:
        out.pop("embed_dim")
    return {k: v for k, v in out.items() if v != {}}


def contradictions(cfg: Any, implied: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """``(model.<key>, configured value, what the file implies)`` for every configured value
    the checkpoint contradicts (``image_size`` aside: a different size resamples the position
    embedding, as LAVIS does when fine-tuning at a higher resolution)."""
    from omegaconf import OmegaConf

    found = []
    mismatch = preset_mismatch(cfg, implied.get("image_encoder", {}))
    if mismatch:
        key, preset, value = mismatch
        found.append(("model.image_encoder.name", cfg.image_encoder.name,
                      f"image_encoder.name=eva_vit (its {key} is {value}; {cfg.image_encoder.name}'s is {preset})"))
    for key, value in flatten(fit_to_config(implied, cfg)).items():
        if key == "image_encoder.image_size":
            continue
        current = OmegaConf.select(cfg, key)
        if current != value:
            found.append((f"model.{key}", current, f"{key}={value}"))
    feature_width = implied.get("qformer", {}).get("encoder_width")
    enc_width, q_width = encoder_widths(cfg)
    configured = q_width or enc_width
    if feature_width is not None and configured is not None and feature_width != configured and not mismatch:
        found.append(("model.image_encoder.name", cfg.image_encoder.name,
                      f"an image encoder with {feature_width}-wide features (this one's are {configured})"))
    return found


def preset_mismatch(cfg: Any, sizes: dict[str, Any]) -> Optional[tuple[str, Any, Any]]:
    """``(size key, the preset's value, the file's)`` when the configured fixed-size encoder
    (``eva_clip_g``, ``eva_vit_tiny``) is not the one in the file; None when it fits."""
    from lavislike.registry import IMAGE_ENCODERS

    enc = cfg.get("image_encoder")
    if not sizes or enc is None or "name" not in enc or enc.name == _SIZED_ENCODER:
        return None
    arch = dict(getattr(IMAGE_ENCODERS.get(enc.name), "ARCH", {}))
    if "mlp_ratio" in arch and "width" in arch:
        arch.setdefault("mlp_dim", int(arch["width"] * arch["mlp_ratio"]))
    for key in ("width", "depth", "patch_size", "mlp_dim"):
        if key in arch and key in sizes and arch[key] != sizes[key]:
            return key, arch[key], sizes[key]
    return None
