"""A tiny convolutional image encoder registered from outside lavislike."""
from dataclasses import dataclass

import torch
from torch import nn

from lavislike.registry import IMAGE_ENCODERS


@dataclass
class ConvPatchEncoderConfig:
    name: str = "conv_patch_encoder"
    image_size: int = 32
    patch_size: int = 8
    width: int = 32
    precision: str = "fp32"
    freeze: bool = True
    use_grad_checkpoint: bool = False
    pretrained: str | None = None


@IMAGE_ENCODERS.register("conv_patch_encoder", config=ConvPatchEncoderConfig)
class ConvPatchEncoder(nn.Module):
    """Patchify with one strided convolution, then a GELU MLP: (B,3,H,W) -> (B,P,C)."""

    def __init__(self, cfg: ConvPatchEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.num_features = cfg.width
        self.patch = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, cfg.width), nn.GELU(), nn.Linear(cfg.width, cfg.width))

    @classmethod
    def from_config(cls, cfg) -> "ConvPatchEncoder":
        fields = ConvPatchEncoderConfig.__dataclass_fields__
        return cls(ConvPatchEncoderConfig(**{k: cfg[k] for k in cfg if k in fields}))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(images).flatten(2).transpose(1, 2)
        return tokens + self.mlp(tokens)
