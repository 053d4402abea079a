"""Video processors (file path -> float tensor (T, 3, H, W)); names and defaults of LAVIS.

* ``alpro_video_train``: decode ``n_frms`` frames at ``image_size`` with head-tail
  sampling, one RandomResizedCrop (scale ``min_scale..max_scale``, bicubic) and one
  horizontal flip for the whole clip, optional RandAugment (two ops drawn once per clip),
  scale to [0, 1], CLIP normalisation.
* ``alpro_video_eval``: decode ``n_frms`` uniformly sampled frames resized to
  ``image_size``, scale to [0, 1], CLIP normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from lavislike.processors.base import CLIP_MEAN, CLIP_STD
from lavislike.processors.randaugment import RandomAugment
from lavislike.registry import PROCESSORS


@dataclass
class VideoEvalConfig:
    name: str = "alpro_video_eval"
    image_size: int = 224
    n_frms: int = 8
    sampling: str = "uniform"  # uniform | headtail
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None


@dataclass
class VideoTrainConfig(VideoEvalConfig):
    name: str = "alpro_video_train"
    sampling: str = "headtail"
    min_scale: float = 0.5
    max_scale: float = 1.0
    rand_augment: bool = True


class _VideoProcessor:
    def __init__(self, image_size, n_frms, sampling, mean, std):
        self.image_size, self.n_frms, self.sampling = image_size, n_frms, sampling
        mean = torch.tensor(tuple(mean) if mean else CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(tuple(std) if std else CLIP_STD).view(1, 3, 1, 1)
        self.mean, self.std = mean, std

    def read(self, path) -> torch.Tensor:
        """Frames as float (T, 3, H, W) in 0..255."""
        from lavislike.datasets.video import load_video

        frames = load_video(path, self.n_frms, self.image_size, self.image_size, self.sampling)
        return frames.permute(0, 3, 1, 2).float()

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        return (frames / 255.0 - self.mean) / self.std


@PROCESSORS.register("alpro_video_eval", config=VideoEvalConfig)
class AlproVideoEvalProcessor(_VideoProcessor):
    def __call__(self, path) -> torch.Tensor:
        return self.normalize(self.read(path))

    @classmethod
    def from_config(cls, cfg) -> "AlproVideoEvalProcessor":
        return cls(cfg.image_size, cfg.n_frms, cfg.sampling, cfg.mean, cfg.std)


@PROCESSORS.register("alpro_video_train", config=VideoTrainConfig)
class AlproVideoTrainProcessor(_VideoProcessor):
    def __init__(self, image_size=224, n_frms=8, sampling="headtail", mean=None, std=None,
                 min_scale=0.5, max_scale=1.0, rand_augment=True):
        super().__init__(image_size, n_frms, sampling, mean, std)
        # v2 transforms draw one set of parameters for the whole (T, C, H, W) clip.
        self.spatial = v2.Compose([
            v2.RandomResizedCrop(image_size, scale=(min_scale, max_scale),
                                 interpolation=InterpolationMode.BICUBIC, antialias=False),
            v2.RandomHorizontalFlip(),
        ])
        self.augment = RandomAugment(2, 5) if rand_augment else None

    def __call__(self, path) -> torch.Tensor:
        frames = self.spatial(self.read(path)).clamp(0, 255)
        if self.augment is not None:
            ops = self.augment.sample_video_ops()
            # PIL ops work per frame; the same ops and directions apply to every frame.
            hwc = frames.permute(0, 2, 3, 1).to(torch.uint8).numpy()
            out = [np.asarray(self.augment.apply_ops(Image.fromarray(f), ops)) for f in hwc]
            frames = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()
        return self.normalize(frames)

    @classmethod
    def from_config(cls, cfg) -> "AlproVideoTrainProcessor":
        return cls(cfg.image_size, cfg.n_frms, cfg.sampling, cfg.mean, cfg.std,
                   cfg.min_scale, cfg.max_scale, cfg.rand_augment)
