"""What every image encoder shares: config options, forward contract, weight loading.

An encoder maps images ``(B, 3, H, W)`` to features ``(B, tokens, C)`` **before** the
``ln_vision`` LayerNorm (the BLIP-2 composition owns that norm). Subclasses implement
``forward_features`` and the checkpoint converters for the formats they can read.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass, is_dataclass
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn
from torch.utils.checkpoint import checkpoint

from lavislike.common.paths import require_local
from lavislike.errors import CheckpointError, ConfigError
from lavislike.models.freezing import (
    cast_precision,
    cpu_fp16_fallback,
    freeze,
    frozen_forward,
    parse_precision,
)

__all__ = ["ImageEncoder", "ImageEncoderConfig", "resize_pos_embed", "strip_prefix"]


@dataclass
class ImageEncoderConfig:
    """Options every image encoder accepts (its YAML block ``image_encoder:``).

    Attributes:
        name: registry name of the encoder.
        image_size: input side in pixels; position embeddings of weights made for
            another size are interpolated (bicubic) when loaded.
        precision: ``fp32``, ``fp16`` or ``bf16`` (fp16 falls back to fp32 on the CPU).
        freeze: no gradients, eval mode whatever ``train()`` says, forward without autograd.
        use_grad_checkpoint: recompute block activations in backward to save memory.
        pretrained: weights to load when the encoder is built: a file, an http(s) URL,
            a hub repo id, or ``default`` for the encoder's published weights; empty
            means random initialisation (nothing is downloaded).
    """

    name: str = ""
    image_size: int = 224
    precision: str = "fp32"
    freeze: bool = True
    use_grad_checkpoint: bool = False
    pretrained: str = ""


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` from the keys that carry it; other keys are kept unchanged."""
    n = len(prefix)
    return {(k[n:] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def resize_pos_embed(
    pos_embed: torch.Tensor,
    grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    align_corners: bool = False,
) -> torch.Tensor:
    """Bicubically resample absolute position embeddings to a new patch grid.

    Args:
        pos_embed: ``(1, prefix + h*w, C)`` or ``(prefix + h*w, C)`` (square old grid).
        grid: the new ``(rows, cols)``.
        num_prefix_tokens: leading entries (class token) kept as they are.
        align_corners: LAVIS's EVA uses False, its CLIP True; match the source.

    Returns:
        The embeddings for ``grid`` in the input's layout and dtype (computed in fp32).
    """
    squeeze = pos_embed.dim() == 2
    pe = pos_embed.unsqueeze(0) if squeeze else pos_embed
    prefix, patches = pe[:, :num_prefix_tokens], pe[:, num_prefix_tokens:]
    old = math.isqrt(patches.shape[1])
    if old * old != patches.shape[1]:
        raise CheckpointError(
            f"position embedding with {patches.shape[1]} patch entries is not a square grid"
        )
    if (old, old) != tuple(grid):
        dim = patches.shape[-1]
        img = patches.float().reshape(1, old, old, dim).permute(0, 3, 1, 2)
        img = F.interpolate(img, size=tuple(grid), mode="bicubic", align_corners=align_corners)
        patches = img.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(pe.dtype)
    out = torch.cat([prefix, patches], dim=1)
    return out[0] if squeeze else out


class ImageEncoder(nn.Module, metaclass=abc.ABCMeta):
    """Base of every registered image encoder.

    Attributes:
        num_features: width ``C`` of the output features.
        Config: the dataclass typing this encoder's YAML block.
        DEFAULT_PRETRAINED: the published weights ``pretrained: default`` loads.
    """

    Config: ClassVar[type] = ImageEncoderConfig
    DEFAULT_PRETRAINED: ClassVar[str] = ""
    num_features: int
    use_grad_checkpoint: bool = False

    # -- building ---------------------------------------------------------------------
    @classmethod
    def resolve_config(cls, cfg: Any = None, **overrides: Any) -> Any:
        """``cfg`` (DictConfig, dict, dataclass or None) merged onto ``cls.Config``.

        Raises:
            ConfigError: an unknown key or a value of the wrong type.
        """
        schema = OmegaConf.structured(cls.Config)
        if cfg is None:
            cfg = {}
        elif is_dataclass(cfg) and not isinstance(cfg, type):
            cfg = OmegaConf.structured(cfg)
        try:
            merged = OmegaConf.merge(schema, cfg, overrides)
        except OmegaConfBaseException as exc:
            raise ConfigError(
                f"image_encoder ({cls.Config.__name__}): {str(exc).splitlines()[0]}"
            ) from None
        return OmegaConf.to_object(merged)

    @classmethod
    def from_config(cls, cfg: Any = None, **overrides: Any) -> "ImageEncoder":
        """Build the encoder from its config block and apply the common options.

        Order: build (fp32) -> load ``pretrained`` -> cast precision -> freeze.

        Args:
            cfg: the ``image_encoder`` block (DictConfig / dict / the dataclass).
            **overrides: keys that replace those in ``cfg``.
        """
        conf = cls.resolve_config(cfg, **overrides)
        parse_precision(conf.precision)  # fail before the (possibly huge) build
        encoder = cls.build(conf)
        encoder.use_grad_checkpoint = bool(conf.use_grad_checkpoint)
        if conf.pretrained:
            encoder.load_pretrained(conf.pretrained)
        return encoder.apply_options(precision=conf.precision, freeze_encoder=conf.freeze)

    @classmethod
    @abc.abstractmethod
    def build(cls, conf: Any) -> "ImageEncoder":
        """Construct the randomly initialised fp32 module from the resolved config."""

    def apply_options(self, precision: str = "fp32", freeze_encoder: bool = True) -> "ImageEncoder":
        """Cast to ``precision`` and freeze when asked (what ``from_config`` ends with)."""
        cast_precision(self, precision)
        if freeze_encoder:
            freeze(self)
        return self

    # -- running ----------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        param = next(self.parameters(), None)
        return param.dtype if param is not None else torch.float32

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``(B, tokens, num_features)`` before ``ln_vision``, in the encoder dtype.

        A frozen encoder runs under ``torch.no_grad()``.
        """
        cpu_fp16_fallback(self, images.device)
        with frozen_forward(self):
            return self.forward_features(images.to(self.dtype))

    @abc.abstractmethod
    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's own computation on images already in its dtype."""

    def run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        """Apply ``blocks`` in turn, with activation checkpointing when enabled."""
        if self.use_grad_checkpoint and torch.is_grad_enabled():
            for block in blocks:
                x = checkpoint(block, x, use_reentrant=False)
        else:
            for block in blocks:
                x = block(x)
        return x

    # -- checkpoints ------------------------------------------------------------------
    def convert_lavis_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """LAVIS ``visual_encoder.*`` keys (prefix optional) -> this module's keys."""
        raise CheckpointError(f"image encoder {type(self).__name__} has no LAVIS checkpoint layout")

    def to_lavis_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """This module's weights under LAVIS key names (``prefix`` prepended)."""
        raise CheckpointError(f"image encoder {type(self).__name__} has no LAVIS checkpoint layout")

    def convert_hf_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """transformers ``vision_model.*`` keys (prefix optional) -> this module's keys.

        ``post_layernorm`` is dropped: the composition maps it to ``ln_vision``.
        """
        raise CheckpointError(
            f"image encoder {type(self).__name__} has no Hugging Face (transformers) equivalent"
        )

    def to_hf_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """This module's weights as ``Blip2VisionModel`` keys, without ``post_layernorm``."""
        raise CheckpointError(
            f"image encoder {type(self).__name__} has no Hugging Face Blip2VisionModel "
            "equivalent; save in lavislike's own format instead"
        )

    def hf_vision_config(self) -> dict[str, Any]:
        """``Blip2VisionConfig`` keyword arguments describing this encoder."""
        raise CheckpointError(
            f"image encoder {type(self).__name__} has no Hugging Face Blip2VisionModel equivalent"
        )

    def load_pretrained(self, source: str) -> "ImageEncoder":
        """Load weights from a file / URL / hub repo in LAVIS, HF or lavislike layout.

        Args:
            source: as ``pretrained`` in the config; ``default`` means
                ``DEFAULT_PRETRAINED``.

        Raises:
            CheckpointError: unreadable source, unknown or missing keys.
        """
        from lavislike.models.image_encoders.weights import load_weights

        if source == "default":
            if not self.DEFAULT_PRETRAINED:
                raise ConfigError(
                    f"image encoder {type(self).__name__} has no published weights; "
                    "give pretrained a file, URL or hub repo id"
                )
            source = self.DEFAULT_PRETRAINED
        require_local(source, "model.image_encoder.pretrained", CheckpointError)
        state_dict = load_weights(source)
        self.load_converted(self.convert_any_state_dict(state_dict), source)
        return self

    def convert_any_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Detect the layout (lavislike, HF, LAVIS) and convert to this module's keys."""
        own = set(self.state_dict())
        if set(state_dict) == own:
            return self.adapt_native_state_dict(state_dict)
        hf_roots = ("vision_model.", "embeddings.", "encoder.layers.")
        if any(k.startswith(hf_roots) for k in state_dict):
            return self.convert_hf_state_dict(state_dict)
        return self.convert_lavis_state_dict(state_dict)

    def adapt_native_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our own keys; subclasses resize position embeddings here."""
        return dict(state_dict)

    def load_converted(self, state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
        """``load_state_dict`` that reports missing / unexpected keys by name."""
        result = self.load_state_dict(state_dict, strict=False)
        problems = []
        if result.missing_keys:
            problems.append(f"missing {sorted(result.missing_keys)[:8]}")
        if result.unexpected_keys:
            problems.append(f"unexpected {sorted(result.unexpected_keys)[:8]}")
        if problems:
            raise CheckpointError(f"{source}: {type(self).__name__} weights: {'; '.join(problems)}")

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}"
