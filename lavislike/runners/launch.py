"""What ``lavislike train`` / ``lavislike evaluate`` do with a resolved config."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from lavislike.errors import ConfigError
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


def build_runner(cfg: DictConfig, cfg_path: str | Path | None = None, evaluate_only: bool = False,
                 datasets: dict | None = None):
    """The runner :func:`run` trains (task set up, model and datasets built; ``datasets``
    already built are used as they are); for callers that need the trained model afterwards
    (``lavislike finetune``)."""
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
    return runner_cls.from_config(cfg, task=task, datasets=datasets)


def check(cfg: DictConfig, cfg_path: str | Path | None = None) -> None:
    """What can be checked before any worker starts, cheaply and without touching weights.

    :func:`lavislike.config.load_config` has checked every key and registry name; this
    adds that every ``${...}`` resolves and that every processor block is valid. The run
    scripts call it (``lavislike train --check-config``) before torchrun starts the
    workers, so a mistake is one line, not one traceback per worker.

    Raises:
        ConfigError: naming the file or key at fault.
    """
    from lavislike.processors.base import processor_config

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        detail = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{cfg_path or 'config'}: {f'key {key}: ' if key else ''}{detail}") from None
    blocks = [("preprocess", cfg.get("preprocess"))]
    blocks += [(f"datasets.{name}", block) for name, block in (cfg.get("datasets") or {}).items()]
    for where, block in blocks:
        for kind in ("vis_processor", "text_processor"):
            pair = (block or {}).get(kind) or {}
            for split, proc in pair.items():
                if proc is not None:
                    processor_config(proc, f"{where}.{kind}.{split}")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) with ``seed``."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
