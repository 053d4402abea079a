"""The demo's frozen image encoder: a small EVA-style ViT pre-trained on vision alone.

Real BLIP-2 freezes an encoder pre-trained elsewhere (EVA-CLIP); nothing can be
downloaded here, so the demo pre-trains its own on a vision-only task - naming the shape,
colour and size in each cell of a 3 x 3 grid, and the background - over freshly drawn
scenes from a seed that the image-text corpus does not use. No caption is seen. The weights are saved as
safetensors and loaded through the encoder's ordinary ``pretrained`` option.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lavislike.common.io import save_safetensors_atomic
from lavislike.datasets.synthetic.generate import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    random_scene,
    render_scene,
)
from lavislike.processors.image import CLIP_MEAN, CLIP_STD

logger = logging.getLogger(__name__)

_N_SHAPE, _N_COLOR, _N_SIZE = len(SHAPES) + 1, len(COLORS) + 1, len(SIZES) + 1  # class 0 = empty cell


def _batch(rng: np.random.Generator, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` scenes as normalised images and (n, 9 cells x [shape, colour, size] + background) labels."""
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.zeros((n, 28), dtype=np.int64)
    colors, backgrounds = list(COLORS), list(BACKGROUNDS)
    for i in range(n):
        scene = random_scene(rng)
        images[i] = np.asarray(render_scene(scene, size, rng))
        for s in scene.shapes:
            cell = POSITIONS.index(s.position)
            labels[i, 3 * cell] = SHAPES.index(s.shape) + 1
            labels[i, 3 * cell + 1] = colors.index(s.color) + 1
            labels[i, 3 * cell + 2] = SIZES.index(s.size) + 1
        labels[i, 27] = backgrounds.index(scene.background)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(labels)


class _GridHead(nn.Module):
    """Per-cell shape / colour / size logits from the patch tokens pooled onto the 3 x 3 grid."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.cell = nn.Linear(width, _N_SHAPE + _N_COLOR + _N_SIZE)
        self.background = nn.Linear(width, len(BACKGROUNDS))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tokens = self.norm(tokens)
        patches = tokens[:, 1:]
        side = math.isqrt(patches.shape[1])
        grid = patches.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
        cells = F.adaptive_avg_pool2d(grid, 3).flatten(2).transpose(1, 2)  # (B, 9, C)
        logits = self.cell(cells)
        shape, color, size = logits.split([_N_SHAPE, _N_COLOR, _N_SIZE], dim=-1)
        return shape, color, size, self.background(tokens[:, 0])


def pretrain_image_encoder(
    encoder_block: dict,
    out_file: str | Path,
    *,
    steps: int = 300,
    batch_size: int = 48,
    lr: float = 2e-3,
    seed: int = 1234,
) -> dict:
    """Train the encoder described by ``encoder_block`` and save its weights.

    Args:
        encoder_block: an ``image_encoder`` config block (registry ``name`` + options).
        out_file: safetensors file for the encoder's ``pretrained`` option.

    Returns:
        Training accuracies of the cell shape / colour / size heads on the last logged
        batch (occupied cells only).
    """
    from lavislike.registry import IMAGE_ENCODERS

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    block = dict(encoder_block, freeze=False, precision="fp32", pretrained="")
    encoder = IMAGE_ENCODERS.get(block["name"]).from_config(block)
    head = _GridHead(encoder.num_features)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 30) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    encoder.train()
    acc = {}
    for step in range(steps):
        images, labels = _batch(rng, batch_size, int(block["image_size"]))
        shape_logits, color_logits, size_logits, bg_logits = head(encoder(images))
        shapes, colors, sizes = labels[:, 0:27:3], labels[:, 1:27:3], labels[:, 2:27:3]
        loss = (
            F.cross_entropy(shape_logits.flatten(0, 1), shapes.flatten())
            + F.cross_entropy(color_logits.flatten(0, 1), colors.flatten())
            + F.cross_entropy(size_logits.flatten(0, 1), sizes.flatten())
            + F.cross_entropy(bg_logits, labels[:, 27])
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            occupied = shapes > 0
            acc = {
                "shape": (shape_logits.argmax(-1) == shapes)[occupied].float().mean().item(),
                "color": (color_logits.argmax(-1) == colors)[occupied].float().mean().item(),
                "size": (size_logits.argmax(-1) == sizes)[occupied].float().mean().item(),
            }
            logger.info("image encoder step %d/%d loss %.3f acc %s", step + 1, steps, loss.item(), acc)
    save_safetensors_atomic(encoder.state_dict(), out_file)
    return acc
