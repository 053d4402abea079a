"""``timm``: any timm model as an image encoder, chosen by its timm name.

``forward_features`` gives the tokens; CNN feature maps ``(B, C, H, W)`` (or timm's
NHWC outputs, e.g. Swin) become ``(B, H*W, C)``. Weights come from timm's own hub
entries only when ``pretrained: timm`` (or ``true``) asks, or from a file/URL.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from lavislike.common.suggest import did_you_mean
from lavislike.errors import CheckpointError, ConfigError
from lavislike.models.freezing import parse_precision
from lavislike.models.image_encoders.base import ImageEncoder, ImageEncoderConfig
from lavislike.registry import IMAGE_ENCODERS

__all__ = ["TimmEncoder", "TimmEncoderConfig"]

_TIMM_WEIGHTS = {"timm", "true", "yes", "1"}
_NO_WEIGHTS = {"", "false", "no", "0", "none"}


@dataclass
class TimmEncoderConfig(ImageEncoderConfig):
    """``timm`` encoder options.

    Attributes:
        model_name: a ``timm.list_models()`` name (``convnext_tiny``, ``vit_base_patch16_224``).
        image_size: passed to timm as ``img_size`` for models that take it (ViTs); 0 keeps
            the model's default.
        pretrained: ``timm`` / ``true`` for timm's published weights (downloaded then),
            a file or URL, or empty for random initialisation.
        timm_kwargs: extra keyword arguments for ``timm.create_model``.
    """

    name: str = "timm"
    model_name: str = "convnext_tiny"
    image_size: int = 0
    pretrained: str = ""
    timm_kwargs: dict[str, Any] = field(default_factory=dict)


@IMAGE_ENCODERS.register("timm", config=TimmEncoderConfig)
class TimmEncoder(ImageEncoder):
    """Wraps ``timm.create_model(model_name, num_classes=0, global_pool="")``.

    Example:
        >>> enc = TimmEncoder.from_config({"model_name": "test_convnext", "freeze": False})
        >>> enc(torch.randn(1, 3, 64, 64)).shape[-1] == enc.num_features
        True
    """

    Config: ClassVar[type] = TimmEncoderConfig

    def __init__(
        self, model_name: str, image_size: int = 0, timm_weights: bool = False, **timm_kwargs: Any
    ):
        super().__init__()
        import timm

        if not timm.is_model(model_name):
            raise ConfigError(
                f"image_encoder.model_name '{model_name}' is not a timm model."
                f"{did_you_mean(model_name, timm.list_models())} See timm.list_models()"
            )
        kwargs = dict(timm_kwargs)
        if image_size:
            kwargs["img_size"] = image_size
        try:
            self.model = timm.create_model(
                model_name, pretrained=timm_weights, num_classes=0, global_pool="", **kwargs
            )
        except TypeError as exc:
            raise ConfigError(
                f"timm model '{model_name}' rejects the options {sorted(kwargs)}: {exc}"
            ) from None
        self.model_name = model_name
        self.num_features = int(self.model.num_features)
        # timm marks channels-last outputs (Swin, some hybrids) with output_fmt
        self.channels_last_output = str(getattr(self.model, "output_fmt", "NCHW")) == "NHWC"

    @classmethod
    def build(cls, conf: Any) -> "TimmEncoder":
        choice = str(conf.pretrained).strip().lower()
        encoder = cls(
            conf.model_name,
            image_size=conf.image_size,
            timm_weights=choice in _TIMM_WEIGHTS,
            **dict(conf.timm_kwargs),
        )
        if conf.use_grad_checkpoint and hasattr(encoder.model, "set_grad_checkpointing"):
            encoder.model.set_grad_checkpointing(True)
        return encoder

    @classmethod
    def from_config(cls, cfg: Any = None, **overrides: Any) -> "TimmEncoder":
        conf = cls.resolve_config(cfg, **overrides)
        parse_precision(conf.precision)
        choice = str(conf.pretrained).strip().lower()
        encoder = cls.build(conf)
        encoder.use_grad_checkpoint = bool(conf.use_grad_checkpoint)
        if choice not in _TIMM_WEIGHTS | _NO_WEIGHTS:
            encoder.load_pretrained(conf.pretrained)
        encoder.apply_options(precision=conf.precision, freeze_encoder=conf.freeze)
        return encoder  # type: ignore[return-value]

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(images)
        if feats.dim() == 4:
            if self.channels_last_output:
                return feats.flatten(1, 2)
            return feats.flatten(2).transpose(1, 2)
        return feats

    def convert_any_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A timm state dict for this model (``model.`` prefix optional); head dropped."""
        from timm.layers import resample_abs_pos_embed

        own = self.model.state_dict()
        sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state_dict.items()}
        classifier = self.model.pretrained_cfg.get("classifier", "head")
        heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        sd = {k: v for k, v in sd.items() if not k.startswith(tuple(h + "." for h in heads))}
        pos = sd.get("pos_embed")
        if pos is not None and "pos_embed" in own and pos.shape != own["pos_embed"].shape:
            grid = self.model.patch_embed.grid_size
            sd["pos_embed"] = resample_abs_pos_embed(
                pos, new_size=grid, num_prefix_tokens=getattr(self.model, "num_prefix_tokens", 1)
            )
        unknown = sorted(set(sd) - set(own))
        if unknown:
            raise CheckpointError(f"timm '{self.model_name}' checkpoint has unknown keys: {unknown[:8]}")
        return {"model." + k: v for k, v in sd.items()}

    def convert_lavis_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """LAVIS never shipped timm encoders; a timm/lavislike state dict is accepted."""
        from lavislike.models.image_encoders.base import strip_prefix

        return self.convert_any_state_dict(strip_prefix(state_dict, "visual_encoder."))

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}, num_features={self.num_features}"
