"""EVA ViT (the BLIP-2 vision tower): ``eva_vit``, ``eva_clip_g`` and ``eva_vit_tiny``.

Built from timm's ``Eva`` blocks, whose parameter names are those of LAVIS's
``eva_vit.py`` (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.norm1``,
``blocks.N.attn.qkv`` + ``q_bias`` / ``v_bias`` with no key bias, ``blocks.N.attn.proj``,
``blocks.N.norm2``, ``blocks.N.mlp.fc1/fc2``) and whose computation is that of
transformers' ``Blip2VisionModel`` (class token + absolute position embedding, pre-norm
layers, exact GELU) without its ``post_layernorm``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from lavislike.errors import CheckpointError
from lavislike.models.image_encoders.base import ImageEncoderConfig, strip_prefix
from lavislike.models.image_encoders.vit import TINY_SIZES, ViTEncoder, ViTPresetConfig
from lavislike.registry import IMAGE_ENCODERS

__all__ = ["EvaClipG", "EvaViT", "EvaViTConfig", "EvaViTTiny"]

EVA_CLIP_G_URL = (
    "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/eva_vit_g.pth"
)


# -- configs ------------------------------------------------------------------------
@dataclass
class EvaViTConfig(ImageEncoderConfig):
    """``eva_vit``: every size is an option.

    Attributes:
        mlp_dim: hidden width of the MLP; 0 means ``int(width * mlp_ratio)`` as LAVIS.
        drop_path_rate: stochastic depth of the last block (linear from 0).
    """

    name: str = "eva_vit"
    image_size: int = 224
    patch_size: int = 14
    width: int = 1408
    depth: int = 39
    heads: int = 16
    mlp_ratio: float = 4.3637
    mlp_dim: int = 0
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    drop_path_rate: float = 0.0


@dataclass
class EvaClipGConfig(ViTPresetConfig):
    name: str = "eva_clip_g"
    precision: str = "fp16"


@dataclass
class EvaViTTinyConfig(ViTPresetConfig):
    name: str = "eva_vit_tiny"
    image_size: int = 32


# our ``eva_vit`` keys <-> ``Blip2VisionConfig`` attributes
HF_VISION_KEYS: tuple[tuple[str, str], ...] = (
    ("image_size", "image_size"),
    ("patch_size", "patch_size"),
    ("width", "hidden_size"),
    ("depth", "num_hidden_layers"),
    ("heads", "num_attention_heads"),
    ("mlp_dim", "intermediate_size"),
    ("layer_norm_eps", "layer_norm_eps"),
    ("qkv_bias", "qkv_bias"),
)


# -- the module ---------------------------------------------------------------------
@IMAGE_ENCODERS.register("eva_vit", config=EvaViTConfig)
class EvaViT(ViTEncoder):
    """EVA / BLIP-2 ViT returning all ``1 + (image_size / patch_size)^2`` tokens.

    Example:
        >>> enc = EvaViT.from_config({"image_size": 32, "patch_size": 8, "width": 32,
        ...                           "depth": 2, "heads": 4, "freeze": False})
        >>> enc(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 17, 32])
    """

    Config: ClassVar[type] = EvaViTConfig
    ARCH_KEYS: ClassVar[tuple[str, ...]] = (
        "patch_size", "width", "depth", "heads", "mlp_ratio", "mlp_dim", "layer_norm_eps", "qkv_bias"
    )
    # LAVIS's EVA interpolate_pos_embed resamples with align_corners=False
    POS_EMBED_ALIGN_CORNERS: ClassVar[bool] = False

    def __init__(
        self,
        *,
        image_size: int = 224,
        patch_size: int = 14,
        width: int = 1408,
        depth: int = 39,
        heads: int = 16,
        mlp_ratio: float = 4.3637,
        mlp_dim: int = 0,
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
    ):
        super().__init__(image_size, patch_size, width, depth, heads)
        from timm.models.eva import Eva

        mlp_dim = mlp_dim or int(width * mlp_ratio)
        self.mlp_dim, self.layer_norm_eps, self.qkv_bias = mlp_dim, layer_norm_eps, qkv_bias
        eva = Eva(
            img_size=image_size,
            patch_size=patch_size,
            embed_dim=width,
            depth=depth,
            num_heads=heads,
            # timm takes int(width * ratio); the +0.5 makes that land on mlp_dim exactly
            mlp_ratio=(mlp_dim + 0.5) / width,
            qkv_bias=qkv_bias,
            qkv_fused=True,
            norm_layer=partial(nn.LayerNorm, eps=layer_norm_eps),
            num_classes=0,
            global_pool="",
            use_post_transformer_norm=False,
            use_rot_pos_emb=False,
            drop_path_rate=drop_path_rate,
        )
        # Keep only the parts LAVIS has, under LAVIS's names: state dicts map 1:1.
        self.patch_embed = eva.patch_embed
        self.cls_token = eva.cls_token
        self.pos_embed = eva.pos_embed
        self.blocks = eva.blocks

    @staticmethod
    def arch_from_hf(vision_config: Any) -> dict[str, Any]:
        """The ``eva_vit`` size keys a transformers ``Blip2VisionConfig`` describes.

        Raises:
            CheckpointError: an activation other than exact GELU.
        """
        if getattr(vision_config, "hidden_act", "gelu") != "gelu":
            raise CheckpointError(
                f"Blip2VisionConfig.hidden_act '{vision_config.hidden_act}' is not supported; "
                "EVA ViT uses exact 'gelu'"
            )
        return {ours: getattr(vision_config, theirs) for ours, theirs in HF_VISION_KEYS}

    @classmethod
    def from_hf_config(cls, vision_config: Any, **options: Any) -> "EvaViT":
        """Build the encoder a transformers ``Blip2VisionConfig`` describes.

        Args:
            vision_config: a ``Blip2VisionConfig`` (or anything with its attributes).
            **options: run-time options (``precision``, ``freeze``, ...).
        """
        return EvaViT.from_config({**EvaViT.arch_from_hf(vision_config), **options})

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.run_blocks(self.blocks, self.embed(images))

    # -- checkpoints ------------------------------------------------------------------
    def convert_lavis_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """LAVIS ``eva_vit.py`` keys -> ours (the same names; extras dropped, pos resized).

        Blocks past ``depth`` and EVA-CLIP's classification leftovers (``norm``,
        ``fc_norm``, ``head``) are the only keys allowed to be dropped.
        """
        sd = self.drop_extra_blocks(strip_prefix(state_dict, "visual_encoder."), "blocks.")
        extras = ("norm.", "fc_norm.", "head.")
        sd = {k: v for k, v in sd.items() if not k.startswith(extras)}
        self.reject_unknown(sd, "LAVIS EVA ViT")
        return self.fit_pos_embed(sd)

    def to_lavis_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {prefix + k: v for k, v in self.state_dict().items()}

    def convert_hf_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """transformers ``Blip2VisionModel`` keys -> ours; ``post_layernorm`` dropped.

        The fused ``qkv.bias`` is split into ``q_bias`` / ``v_bias``; its key third is
        dropped because a bias added to every key shifts each query's logits by one
        constant, which softmax cancels.
        """
        sd = strip_prefix(state_dict, "vision_model.")
        sd = self.drop_extra_blocks(sd, "encoder.layers.")
        out: dict[str, torch.Tensor] = {}
        emb = {
            "embeddings.class_embedding": "cls_token",
            "embeddings.position_embedding": "pos_embed",
            "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
            "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
        }
        layer = {
            "layer_norm1": "norm1",
            "layer_norm2": "norm2",
            "self_attn.qkv": "attn.qkv",
            "self_attn.projection": "attn.proj",
            "mlp.fc1": "mlp.fc1",
            "mlp.fc2": "mlp.fc2",
        }
        unknown = []
        for key, value in sd.items():
            if key.startswith("post_layernorm."):
                continue
            if key in emb:
                out[emb[key]] = value
                continue
            if not key.startswith("encoder.layers."):
                unknown.append(key)
                continue
            index, rest = key[len("encoder.layers."):].split(".", 1)
            module, _, leaf = rest.rpartition(".")
            if rest == "self_attn.qkv.bias":
                q, _k, v = value.chunk(3)
                out[f"blocks.{index}.attn.q_bias"] = q
                out[f"blocks.{index}.attn.v_bias"] = v
            elif module in layer:
                out[f"blocks.{index}.{layer[module]}.{leaf}"] = value
            else:
                unknown.append(key)
        if unknown:
            raise CheckpointError(f"Blip2VisionModel checkpoint has unknown keys: {unknown[:8]}")
        return self.fit_pos_embed(out)

    def to_hf_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Our weights as ``Blip2VisionModel`` keys (no ``post_layernorm``)."""
        out = {
            "embeddings.class_embedding": self.cls_token,
            "embeddings.position_embedding": self.pos_embed,
            "embeddings.patch_embedding.weight": self.patch_embed.proj.weight,
            "embeddings.patch_embedding.bias": self.patch_embed.proj.bias,
        }
        for i, blk in enumerate(self.blocks):
            p = f"encoder.layers.{i}."
            out[p + "layer_norm1.weight"] = blk.norm1.weight
            out[p + "layer_norm1.bias"] = blk.norm1.bias
            out[p + "self_attn.qkv.weight"] = blk.attn.qkv.weight
            if blk.attn.q_bias is not None:
                q, v = blk.attn.q_bias, blk.attn.v_bias
                out[p + "self_attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
            out[p + "self_attn.projection.weight"] = blk.attn.proj.weight
            out[p + "self_attn.projection.bias"] = blk.attn.proj.bias
            out[p + "layer_norm2.weight"] = blk.norm2.weight
            out[p + "layer_norm2.bias"] = blk.norm2.bias
            for fc in ("fc1", "fc2"):
                out[p + f"mlp.{fc}.weight"] = getattr(blk.mlp, fc).weight
                out[p + f"mlp.{fc}.bias"] = getattr(blk.mlp, fc).bias
        return {prefix + k: v.detach() for k, v in out.items()}

    def hf_vision_config(self) -> dict[str, Any]:
        """``Blip2VisionConfig`` kwargs for this encoder."""
        return {**{theirs: getattr(self, ours) for ours, theirs in HF_VISION_KEYS}, "hidden_act": "gelu"}


# -- presets ------------------------------------------------------------------------
@IMAGE_ENCODERS.register("eva_clip_g", config=EvaClipGConfig)
class EvaClipG(EvaViT):
    """EVA-CLIP ViT-g/14 as BLIP-2 uses it: 39 of its 40 blocks, width 1408.

    ``pretrained: default`` loads LAVIS's ``eva_vit_g.pth`` (the 40th block is dropped).
    """

    Config: ClassVar[type] = EvaClipGConfig
    ARCH: ClassVar[dict[str, Any]] = {
        "patch_size": 14,
        "width": 1408,
        "depth": 39,
        "heads": 16,
        "mlp_ratio": 4.3637,  # int(1408 * 4.3637) = 6144
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
    }
    DEFAULT_PRETRAINED: ClassVar[str] = EVA_CLIP_G_URL


@IMAGE_ENCODERS.register("eva_vit_tiny", config=EvaViTTinyConfig)
class EvaViTTiny(EvaViT):
    """A CPU-sized EVA ViT for tests and demos: 32 px, patch 8, width 32, 2 blocks."""

    Config: ClassVar[type] = EvaViTTinyConfig
    ARCH: ClassVar[dict[str, Any]] = {**TINY_SIZES, "layer_norm_eps": 1e-6, "qkv_bias": True}
