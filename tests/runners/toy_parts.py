"""A tiny model and dataset honouring the runner contract (shared by the runner tests and
the 2-process script they launch)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


class ToyModel(nn.Module):
    """Frozen projection + 2 trainable blocks + norm + head; loss = mean squared error."""

    def __init__(self, dim: int = 6, dropout: float = 0.0):
        super().__init__()
        self.frozen = nn.Linear(dim, dim)
        self.frozen.requires_grad_(False)
        self.blocks = nn.ModuleList([nn.Linear(dim, dim) for _ in range(2)])
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, 1)

    def forward(self, samples: dict) -> dict:
        with torch.no_grad():
            h = self.frozen(samples["x"])
        for block in self.blocks:
            h = torch.tanh(block(h))
        pred = self.head(self.drop(self.norm(h))).squeeze(-1)
        loss = ((pred - samples["y"]) ** 2).mean()
        if "poison" in samples:
            loss = loss + samples["poison"].sum()  # NaN when any sample is poisoned
        return {"loss": loss, "loss_mse": loss.detach()}

    def trainable_state_dict(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("frozen.")}


class ToyData(Dataset):
    """``n`` random (x, y) pairs; ``poison`` marks samples whose loss is NaN."""

    def __init__(self, n: int = 24, dim: int = 6, seed: int = 0, poison: set[int] | None = None):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.y = torch.randn(n, generator=g)
        self.poison = poison

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        item = {"x": self.x[i], "y": self.y[i]}
        if self.poison is not None:
            item["poison"] = torch.tensor(float("nan") if i in self.poison else 0.0)
        return item


def train_until_killed(runner, step: int):
    """Train ``runner`` until it is killed (``KeyboardInterrupt``) as it starts optimizer
    step ``step``; returns the latest checkpoint folder it wrote."""
    import pytest

    from lavislike.common.checkpoint import find_latest_checkpoint

    real_step = runner.train_step

    def dying_step(stream, at):
        if at == step:
            raise KeyboardInterrupt
        return real_step(stream, at)

    runner.train_step = dying_step
    with pytest.raises(KeyboardInterrupt):
        runner.train()
    return find_latest_checkpoint(runner.output_dir)


def run_cfg(tmp, **run):
    from omegaconf import OmegaConf

    base = {"output_dir": str(tmp), "init_lr": 0.05, "min_lr": 0.0, "warmup_lr": 0.0, "warmup_steps": 2,
            "weight_decay": 0.01, "max_epoch": 2, "batch_size_train": 4, "batch_size_eval": 8,
            "seed": 7, "progress_bar": False, "tensorboard": False, "device": "cpu", "log_freq": 1}
    base.update(run)
    return OmegaConf.create({"run": base})


def make_runner(tmp, model=None, datasets=None, runner="runner_base", task=None, collate_fn=None, **run):
    from torch.utils.data import default_collate

    from lavislike.registry import RUNNERS
    from lavislike.tasks.base_task import BaseTask

    torch.manual_seed(0)
    model = model if model is not None else ToyModel()
    datasets = datasets if datasets is not None else {"toy": {"train": ToyData()}}
    cls = RUNNERS.get(runner)
    return cls(run_cfg(tmp, runner=runner, **run), task or BaseTask(), model, datasets,
               collate_fn=collate_fn or default_collate, save_config=lambda cfg, out: None)
