"""The optimisation loop shared by the demo's text-only pre-training of its frozen LLMs."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMSizes:
    """A tiny LLM's sizes and its text-only optimisation (the OPT's and the T5's alike)."""

    steps: int = 800
    batch: int = 32
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    lr: float = 3e-3


QUICK_LM = LMSizes(steps=10, batch=8, hidden=32, layers=1)  # the smoke-test size


def fit(model: torch.nn.Module, steps: int, lr: float, loss_at: Callable[[int], torch.Tensor], *,
        label: str, warmup: int = 20, weight_decay: float = 0.01, max_grad_norm: float = 1.0) -> None:
    """Train ``model`` for ``steps`` steps of AdamW, linear warm-up then cosine decay.

    Args:
        loss_at: builds step ``i``'s batch and returns its loss (the caller owns the data).
        label: names the model in the progress log ("tiny OPT").
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    model.train()
    for step in range(steps):
        loss = loss_at(step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            logger.info("%s step %d/%d loss %.3f", label, step + 1, steps, loss.item())
    model.eval()
