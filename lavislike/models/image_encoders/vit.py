"""What the class-token ViTs (EVA, CLIP) share: sizes, presets, embedding, key clean-up.

Both are timm blocks behind ``patch_embed`` + ``cls_token`` + absolute ``pos_embed``; they
differ in their blocks and in the checkpoint layouts they read.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch

from lavislike.errors import CheckpointError
from lavislike.models.image_encoders.base import ImageEncoder, ImageEncoderConfig, resize_pos_embed

__all__ = ["TINY_SIZES", "ViTEncoder", "ViTPresetConfig"]

logger = logging.getLogger(__name__)

# the CPU-sized towers of tests and demos (32 px images -> a 4x4 grid)
TINY_SIZES: dict[str, Any] = {"patch_size": 8, "width": 32, "depth": 2, "heads": 4, "mlp_ratio": 4.0}


@dataclass
class ViTPresetConfig(ImageEncoderConfig):
    """A fixed architecture (``ARCH`` of the class): only run-time options are left."""

    drop_path_rate: float = 0.0


class ViTEncoder(ImageEncoder):
    """Base of the class-token ViTs.

    Attributes:
        ARCH_KEYS: config keys that size the architecture (passed to ``__init__``).
        ARCH: values a preset fixes, overriding the config's.
        POS_EMBED_ALIGN_CORNERS: how the source resamples position embeddings.
    """

    ARCH_KEYS: ClassVar[tuple[str, ...]] = ()
    ARCH: ClassVar[dict[str, Any]] = {}
    POS_EMBED_ALIGN_CORNERS: ClassVar[bool] = False

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, heads: int):
        super().__init__()
        self.image_size, self.patch_size = image_size, patch_size
        self.width, self.depth, self.heads = width, depth, heads
        self.num_features = width

    @classmethod
    def build(cls, conf: Any) -> "ViTEncoder":
        arch = {k: getattr(conf, k) for k in cls.ARCH_KEYS if hasattr(conf, k)}
        arch.update(cls.ARCH)
        return cls(image_size=conf.image_size, drop_path_rate=conf.drop_path_rate, **arch)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.patch_embed.grid_size)  # type: ignore[return-value]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the class token, plus the position embedding ``(B, 1+N, C)``."""
        x = self.patch_embed(images)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed

    # -- checkpoints ------------------------------------------------------------------
    def fit_pos_embed(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Resample ``sd["pos_embed"]`` to this encoder's grid when the sizes differ."""
        if "pos_embed" in sd and sd["pos_embed"].shape != self.pos_embed.shape:
            # LAVIS does this to fine-tune at a higher resolution; never silently
            logger.warning(
                "image encoder: resampling the checkpoint's position embedding (%d positions) to "
                "%d for image_size=%d", sd["pos_embed"].shape[1], self.pos_embed.shape[1], self.image_size,
            )
            sd["pos_embed"] = resize_pos_embed(
                sd["pos_embed"], self.grid, 1, self.POS_EMBED_ALIGN_CORNERS
            )
        return sd

    def adapt_native_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.fit_pos_embed(dict(state_dict))

    def drop_extra_blocks(self, sd: Mapping[str, torch.Tensor], root: str) -> dict[str, torch.Tensor]:
        """Drop blocks past ``depth`` under ``root``: checkpoints keep the layer BLIP-2 removes."""
        out = {}
        for key, value in sd.items():
            if key.startswith(root) and int(key[len(root):].split(".", 1)[0]) >= self.depth:
                continue
            out[key] = value
        return out

    def reject_unknown(self, sd: Mapping[str, torch.Tensor], what: str) -> None:
        """Raise naming the keys of ``sd`` (already converted) this module does not have."""
        unknown = sorted(set(sd) - set(self.state_dict()))
        if unknown:
            raise CheckpointError(f"{what} checkpoint has unknown keys: {unknown[:8]}")
