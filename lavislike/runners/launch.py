"""What ``lavislike train`` / ``lavislike evaluate`` do with a resolved config."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict

from lavislike.registry import RUNNERS

logger = logging.getLogger("lavislike")


def run(cfg: DictConfig, cfg_path: str | Path | None = None, evaluate_only: bool = False) -> dict:
    """Set up the task, build the model and datasets, and hand them to the runner.

    Args:
        cfg: the config from :func:`lavislike.config.load_config`.
        cfg_path: where it came from (its stem names the experiment by default).
        evaluate_only: ``lavislike evaluate``: no training, test/valid splits only.

    Returns:
        The runner's summary (metrics, output folder).
    """
    summary = build_runner(cfg, cfg_path, evaluate_only).train()
    logger.info("outputs in %s", summary.get("output_dir"))
    return summary


def build_runner(cfg: DictConfig, cfg_path: str | Path | None = None, evaluate_only: bool = False):
    """The runner :func:`run` trains (task set up, model and datasets built); for callers
    that need the trained model afterwards (``lavislike finetune``)."""
    from lavislike.tasks import setup_task

    with open_dict(cfg):
        if evaluate_only:
            cfg.run.evaluate = True
        if not cfg.run.get("experiment") and cfg_path:
            cfg.run.experiment = Path(cfg_path).stem
    runner_cls = RUNNERS.get(cfg.run.runner)
    # Seed before the model is built: randomly initialised parts (new Q-Former layers, a
    # random frozen encoder) must be the same in every run of a config, or a resumed run
    # (which reloads only the trained weights) would continue a different model.
    seed_everything(int(cfg.run.get("seed", 42)))
    task = setup_task(cfg)
    return runner_cls.from_config(cfg, task=task)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) with ``seed``."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
