"""Learning-rate schedules, updated once per optimizer step (not per epoch).

Every schedule is a pure function of the global optimizer step, so resuming only needs
the step count, and the value at any step can be checked by hand. Param groups may carry
an ``lr_scale`` (layer-wise lr decay); the group's lr is ``schedule(step) * lr_scale``.

The keys every schedule reads (``init_lr``, ``min_lr``, ``warmup_lr``, ``warmup_steps``)
belong to :class:`lavislike.config.schema.RunConfig`; a schedule's config dataclass lists
only the keys it adds.
"""

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from lavislike.errors import ConfigError
from lavislike.registry import LR_SCHEDULERS


class StepLRSchedule(ABC):
    """Base class: ``lr_at(step)`` defines the schedule; ``step(n)`` applies it."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                 warmup_lr: float, init_lr: float, min_lr: float):
        if total_steps <= 0:
            raise ConfigError(f"run: the schedule needs a positive number of steps, got {total_steps}")
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_lr = float(warmup_lr)
        self.init_lr = float(init_lr)
        self.min_lr = float(min_lr)
        self.last_step = -1

    @staticmethod
    def run_args(run_cfg) -> dict:
        """The shared constructor arguments, read from the ``run`` section."""
        return dict(warmup_steps=run_cfg.warmup_steps, warmup_lr=run_cfg.warmup_lr,
                    init_lr=run_cfg.init_lr, min_lr=run_cfg.get("min_lr", 0.0))

    def _warmup(self, step: int) -> float | None:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.init_lr - self.warmup_lr) * step / self.warmup_steps
        return None

    @abstractmethod
    def lr_at(self, step: int) -> float:
        """The base learning rate at optimizer step ``step`` (0-based)."""

    def step(self, step: int) -> float:
        """Set every group's lr for optimizer step ``step`` (0-based); returns the base lr."""
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.last_step = step
        return lr

    def get_last_lr(self) -> float:
        return self.lr_at(max(self.last_step, 0))

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        if self.last_step >= 0:
            self.step(self.last_step)


@dataclass
class LinearWarmupCosineConfig:
    """Run keys ``linear_warmup_cosine_lr`` adds (none beyond RunConfig's)."""

    lr_sched: str = "linear_warmup_cosine_lr"


@LR_SCHEDULERS.register("linear_warmup_cosine_lr", config=LinearWarmupCosineConfig)
class LinearWarmupCosineLR(StepLRSchedule):
    """Linear warm-up from ``warmup_lr`` to ``init_lr`` over ``warmup_steps`` steps, then a
    half cosine from ``init_lr`` down to ``min_lr`` over the remaining steps.

    Example:
        >>> s = LinearWarmupCosineLR(opt, total_steps=100, warmup_steps=10,
        ...                          warmup_lr=0.0, init_lr=1e-4, min_lr=1e-5)
        >>> s.lr_at(5)    # half-way through warm-up: 5e-5
    """

    def lr_at(self, step: int) -> float:
        warm = self._warmup(step)
        if warm is not None:
            return warm
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.init_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    @classmethod
    def from_config(cls, run_cfg, optimizer, total_steps: int, steps_per_epoch: int) -> "LinearWarmupCosineLR":
        return cls(optimizer, total_steps, **cls.run_args(run_cfg))


@dataclass
class LinearWarmupStepConfig:
    """Run keys ``linear_warmup_step_lr`` adds to RunConfig's."""

    lr_sched: str = "linear_warmup_step_lr"
    lr_decay_rate: float = 0.9
    lr_step_size: int = 0  # steps between decays; 0 = one epoch


@LR_SCHEDULERS.register("linear_warmup_step_lr", config=LinearWarmupStepConfig)
class LinearWarmupStepLR(StepLRSchedule):
    """Warm-up, then ``max(min_lr, init_lr * decay_rate ** (step // step_size))``."""

    def __init__(self, optimizer, total_steps, warmup_steps, warmup_lr, init_lr, min_lr,
                 decay_rate: float, step_size: int):
        super().__init__(optimizer, total_steps, warmup_steps, warmup_lr, init_lr, min_lr)
        self.decay_rate = float(decay_rate)
        self.step_size = max(1, int(step_size))

    def lr_at(self, step: int) -> float:
        warm = self._warmup(step)
        if warm is not None:
            return warm
        return max(self.min_lr, self.init_lr * self.decay_rate ** (step // self.step_size))

    @classmethod
    def from_config(cls, run_cfg, optimizer, total_steps: int, steps_per_epoch: int) -> "LinearWarmupStepLR":
        size = run_cfg.get("lr_step_size", 0) or steps_per_epoch
        return cls(optimizer, total_steps, **cls.run_args(run_cfg),
                   decay_rate=run_cfg.get("lr_decay_rate", 0.9), step_size=size)


@dataclass
class ConstantConfig:
    """Run keys ``constant_lr`` adds (none beyond RunConfig's; ``min_lr`` is unused)."""

    lr_sched: str = "constant_lr"


@LR_SCHEDULERS.register("constant_lr", config=ConstantConfig)
class ConstantLR(StepLRSchedule):
    """Warm-up, then ``init_lr`` for the rest of the run."""

    def lr_at(self, step: int) -> float:
        warm = self._warmup(step)
        return self.init_lr if warm is None else warm

    @classmethod
    def from_config(cls, run_cfg, optimizer, total_steps: int, steps_per_epoch: int) -> "ConstantLR":
        return cls(optimizer, total_steps, **cls.run_args(run_cfg))
