"""CLIP ViT (OpenAI layout): ``clip_vit``, ``clip_L`` and ``clip_vit_tiny``.

Built from timm's ``VisionTransformer`` blocks with CLIP's options: no patch bias, a
LayerNorm before the blocks (``ln_pre``), fused qkv with bias, QuickGELU, LayerNorm eps
1e-5, no final norm. Our keys are timm's; LAVIS ``clip_vit.py`` keys (``conv1``,
``class_embedding``, ``positional_embedding``, ``ln_pre``,
``transformer.resblocks.N.{ln_1,attn.in_proj_*,attn.out_proj,ln_2,mlp.c_fc,mlp.c_proj}``)
and transformers ``CLIPVisionModel`` keys are converted on load.
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

__all__ = ["ClipL", "ClipViT", "ClipViTConfig"]

CLIP_L_URL = (
    "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/clip_vit_L.pth"
)


@dataclass
class ClipViTConfig(ImageEncoderConfig):
    """``clip_vit``: every size is an option."""

    name: str = "clip_vit"
    image_size: int = 224
    patch_size: int = 14
    width: int = 1024
    depth: int = 23
    heads: int = 16
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-5
    drop_path_rate: float = 0.0


@dataclass
class ClipLConfig(ViTPresetConfig):
    name: str = "clip_L"
    precision: str = "fp16"


@dataclass
class ClipViTTinyConfig(ViTPresetConfig):
    name: str = "clip_vit_tiny"
    image_size: int = 32


# LAVIS / OpenAI block names -> timm block names
_LAVIS_BLOCK = {
    "ln_1": "norm1",
    "ln_2": "norm2",
    "attn.in_proj_weight": "attn.qkv.weight",
    "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj.weight": "attn.proj.weight",
    "attn.out_proj.bias": "attn.proj.bias",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_HF_BLOCK = {
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "self_attn.out_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


@IMAGE_ENCODERS.register("clip_vit", config=ClipViTConfig)
class ClipViT(ViTEncoder):
    """CLIP vision tower returning all ``1 + grid^2`` tokens, before any final norm."""

    Config: ClassVar[type] = ClipViTConfig
    ARCH_KEYS: ClassVar[tuple[str, ...]] = (
        "patch_size", "width", "depth", "heads", "mlp_ratio", "layer_norm_eps"
    )
    # LAVIS's CLIP interpolate_pos_embed resamples with align_corners=True
    POS_EMBED_ALIGN_CORNERS: ClassVar[bool] = True

    def __init__(
        self,
        *,
        image_size: int = 224,
        patch_size: int = 14,
        width: int = 1024,
        depth: int = 23,
        heads: int = 16,
        mlp_ratio: float = 4.0,
        layer_norm_eps: float = 1e-5,
        drop_path_rate: float = 0.0,
    ):
        super().__init__(image_size, patch_size, width, depth, heads)
        from timm.models.vision_transformer import VisionTransformer

        vit = VisionTransformer(
            img_size=image_size,
            patch_size=patch_size,
            embed_dim=width,
            depth=depth,
            num_heads=heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            pre_norm=True,  # CLIP's ln_pre; also drops the patch-embedding bias
            final_norm=False,
            num_classes=0,
            global_pool="",
            act_layer="quick_gelu",
            norm_layer=partial(nn.LayerNorm, eps=layer_norm_eps),
            drop_path_rate=drop_path_rate,
        )
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.pos_embed = vit.pos_embed
        self.norm_pre = vit.norm_pre
        self.blocks = vit.blocks

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.run_blocks(self.blocks, self.norm_pre(self.embed(images)))

    # -- checkpoints ------------------------------------------------------------------
    def _finish(self, sd: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
        sd = self.fit_pos_embed(sd)
        self.reject_unknown(sd, f"{fmt} CLIP")
        return sd

    def convert_lavis_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """LAVIS / OpenAI ``clip_vit.py`` keys -> ours.

        Allowed to be dropped: blocks past ``depth`` (BLIP-2 removes the last one) and
        CLIP's head (``ln_post``, ``proj``).
        """
        sd = self.drop_extra_blocks(strip_prefix(state_dict, "visual_encoder."), "transformer.resblocks.")
        out: dict[str, torch.Tensor] = {}
        for key, value in sd.items():
            if key == "conv1.weight":
                out["patch_embed.proj.weight"] = value
            elif key == "class_embedding":
                out["cls_token"] = value.reshape(1, 1, -1)
            elif key == "positional_embedding":
                out["pos_embed"] = value.unsqueeze(0)
            elif key.startswith("ln_pre."):
                out["norm_pre." + key[len("ln_pre."):]] = value
            elif key.startswith(("ln_post.", "proj")):
                continue
            elif key.startswith("transformer.resblocks."):
                index, rest = key[len("transformer.resblocks."):].split(".", 1)
                out[f"blocks.{index}.{_rename(rest, _LAVIS_BLOCK)}"] = value
            else:
                out[key] = value  # reported as unknown below
        return self._finish(out, "LAVIS")

    def to_lavis_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        reverse = {v: k for k, v in _LAVIS_BLOCK.items()}
        out: dict[str, torch.Tensor] = {}
        for key, value in self.state_dict().items():
            if key == "patch_embed.proj.weight":
                out["conv1.weight"] = value
            elif key == "cls_token":
                out["class_embedding"] = value.reshape(-1)
            elif key == "pos_embed":
                out["positional_embedding"] = value[0]
            elif key.startswith("norm_pre."):
                out["ln_pre." + key[len("norm_pre."):]] = value
            else:
                index, rest = key[len("blocks."):].split(".", 1)
                out[f"transformer.resblocks.{index}.{_rename(rest, reverse)}"] = value
        return {prefix + k: v for k, v in out.items()}

    def convert_hf_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """transformers ``CLIPVisionModel`` keys -> ours (``post_layernorm`` dropped).

        BLIP-2's transformers port has no CLIP tower, so there is no reverse export.
        """
        sd = self.drop_extra_blocks(strip_prefix(state_dict, "vision_model."), "encoder.layers.")
        out: dict[str, torch.Tensor] = {}
        qkv: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in sd.items():
            if key == "embeddings.class_embedding":
                out["cls_token"] = value.reshape(1, 1, -1)
            elif key == "embeddings.patch_embedding.weight":
                out["patch_embed.proj.weight"] = value
            elif key == "embeddings.position_embedding.weight":
                out["pos_embed"] = value.unsqueeze(0)
            elif key == "embeddings.position_ids" or key.startswith("post_layernorm."):
                continue
            elif key.startswith("pre_layrnorm."):  # sic: transformers' spelling
                out["norm_pre." + key[len("pre_layrnorm."):]] = value
            elif key.startswith("encoder.layers."):
                index, rest = key[len("encoder.layers."):].split(".", 1)
                if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                    _, proj, leaf = rest.split(".")
                    qkv.setdefault(f"blocks.{index}.attn.qkv.{leaf}", {})[proj] = value
                else:
                    out[f"blocks.{index}.{_rename(rest, _HF_BLOCK)}"] = value
            else:
                out[key] = value
        for key, parts in qkv.items():
            if set(parts) != {"q_proj", "k_proj", "v_proj"}:
                raise CheckpointError(
                    f"CLIPVisionModel checkpoint lacks parts of {key}: has {sorted(parts)}"
                )
            out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
        return self._finish(out, "CLIPVisionModel")


def _rename(rest: str, table: Mapping[str, str]) -> str:
    """Rename the leading module path of ``rest`` by ``table`` (longest match first)."""
    for old in sorted(table, key=len, reverse=True):
        if rest == old or rest.startswith(old + "."):
            return table[old] + rest[len(old):]
    return rest


@IMAGE_ENCODERS.register("clip_L", config=ClipLConfig)
class ClipL(ClipViT):
    """CLIP ViT-L/14 as BLIP-2 uses it: 23 of its 24 blocks, width 1024.

    ``pretrained: default`` loads LAVIS's ``clip_vit_L.pth``.
    """

    Config: ClassVar[type] = ClipLConfig
    ARCH: ClassVar[dict[str, Any]] = {
        "patch_size": 14,
        "width": 1024,
        "depth": 23,
        "heads": 16,
        "mlp_ratio": 4.0,
        "layer_norm_eps": 1e-5,
    }
    DEFAULT_PRETRAINED: ClassVar[str] = CLIP_L_URL


@IMAGE_ENCODERS.register("clip_vit_tiny", config=ClipViTTinyConfig)
class ClipViTTiny(ClipViT):
    """A CPU-sized CLIP ViT: 32 px, patch 8, width 32, 2 blocks."""

    Config: ClassVar[type] = ClipViTTinyConfig
    ARCH: ClassVar[dict[str, Any]] = {**TINY_SIZES, "layer_norm_eps": 1e-5}
