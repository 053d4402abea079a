"""A tiny convolutional image encoder registered from outside lavislike.

Deriving from :class:`lavislike.models.image_encoders.ImageEncoder` gives the common
options (``precision``, ``freeze``, ``pretrained``, gradient checkpointing) for free; the
plugin only says how to build the module and what its forward computes.
"""
from dataclasses import dataclass

import torch
from torch import nn

from lavislike.models.image_encoders import ImageEncoder, ImageEncoderConfig
from lavislike.registry import IMAGE_ENCODERS


@dataclass
class ConvPatchEncoderConfig(ImageEncoderConfig):
    name: str = "conv_patch_encoder"
    image_size: int = 32
    patch_size: int = 8
    width: int = 32


@IMAGE_ENCODERS.register("conv_patch_encoder", config=ConvPatchEncoderConfig)
class ConvPatchEncoder(ImageEncoder):
    """Patchify with one strided convolution, then a residual GELU MLP: (B,3,H,W) -> (B,P,C)."""

    Config = ConvPatchEncoderConfig

    def __init__(self, width: int, patch_size: int):
        super().__init__()
        self.num_features = width
        self.patch = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))

    @classmethod
    def build(cls, conf: ConvPatchEncoderConfig) -> "ConvPatchEncoder":
        return cls(conf.width, conf.patch_size)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(images).flatten(2).transpose(1, 2)
        return tokens + self.mlp(tokens)
