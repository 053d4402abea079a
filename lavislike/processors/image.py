"""Image processors of the BLIP / BLIP-2 reference checkpoints (PIL image -> (3, H, W)).

* ``blip2_image_train``: RandomResizedCrop(size, scale=(0.5, 1), bicubic), horizontal
  flip, to tensor, CLIP normalisation (BLIP-2 pre-training).
* ``blip_image_train``: the same plus RandAugment(2, 5) after the flip (BLIP, and the
  BLIP-2 captioning / VQA fine-tuning configs).
* ``blip_image_eval``: Resize((size, size), bicubic), to tensor, CLIP normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from lavislike.processors.base import CLIP_MEAN, CLIP_STD
from lavislike.processors.randaugment import RandomAugment
from lavislike.registry import PROCESSORS


@dataclass
class ImageTrainConfig:
    name: str = "blip2_image_train"
    image_size: int = 224
    mean: Optional[List[float]] = None  # None: CLIP statistics
    std: Optional[List[float]] = None
    min_scale: float = 0.5
    max_scale: float = 1.0


@dataclass
class BlipImageTrainConfig(ImageTrainConfig):
    name: str = "blip_image_train"
    image_size: int = 384
    rand_augment: bool = True  # LAVIS always applies it; off gives blip2_image_train


@dataclass
class ImageEvalConfig:
    name: str = "blip_image_eval"
    image_size: int = 224
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None


def _normalize(mean, std) -> transforms.Normalize:
    return transforms.Normalize(tuple(mean) if mean else CLIP_MEAN, tuple(std) if std else CLIP_STD)


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


class _Transform:
    """A processor is its transform pipeline; ``__call__`` makes RGB first."""

    transform: transforms.Compose

    def __call__(self, img: Image.Image):
        return self.transform(_rgb(img))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform})"


@PROCESSORS.register("blip2_image_train", config=ImageTrainConfig)
class Blip2ImageTrainProcessor(_Transform):
    """Random resized crop + flip + normalise (no RandAugment)."""

    def __init__(self, image_size=224, mean=None, std=None, min_scale=0.5, max_scale=1.0, rand_augment=False):
        self.image_size = image_size
        ops = [
            transforms.RandomResizedCrop(
                image_size, scale=(min_scale, max_scale), interpolation=InterpolationMode.BICUBIC
            ),
            transforms.RandomHorizontalFlip(),
        ]
        if rand_augment:
            ops.append(RandomAugment(2, 5))
        self.transform = transforms.Compose(ops + [transforms.ToTensor(), _normalize(mean, std)])

    @classmethod
    def from_config(cls, cfg) -> "Blip2ImageTrainProcessor":
        return cls(cfg.image_size, cfg.mean, cfg.std, cfg.min_scale, cfg.max_scale,
                   rand_augment=bool(cfg.get("rand_augment", False)))


@PROCESSORS.register("blip_image_train", config=BlipImageTrainConfig)
class BlipImageTrainProcessor(Blip2ImageTrainProcessor):
    """BLIP's train pipeline: crop + flip + RandAugment(2, 5) + normalise."""

    def __init__(self, image_size=384, mean=None, std=None, min_scale=0.5, max_scale=1.0, rand_augment=True):
        super().__init__(image_size, mean, std, min_scale, max_scale, rand_augment)

    @classmethod
    def from_config(cls, cfg) -> "BlipImageTrainProcessor":
        return cls(cfg.image_size, cfg.mean, cfg.std, cfg.min_scale, cfg.max_scale, cfg.rand_augment)


@PROCESSORS.register("blip_image_eval", config=ImageEvalConfig)
class BlipImageEvalProcessor(_Transform):
    """Square bicubic resize + normalise."""

    def __init__(self, image_size=224, mean=None, std=None):
        self.image_size = image_size
        self.transform = transforms.Compose(
            [
                transforms.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC),
                transforms.ToTensor(),
                _normalize(mean, std),
            ]
        )

    @classmethod
    def from_config(cls, cfg) -> "BlipImageEvalProcessor":
        return cls(cfg.image_size, cfg.mean, cfg.std)
