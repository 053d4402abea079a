"""The demo's runs, each one the ordinary ``lavislike train`` / ``evaluate`` of a config.

Training and evaluation go through :func:`lavislike.runners.launch.run` with configs
from :mod:`lavislike_demo.plan`; the blind baselines are the same evaluation configs with
the eval image processor swapped for :data:`~lavislike_demo.baselines.BLANK_PROCESSOR`.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Sequence

from lavislike_demo.baselines import BLANK_PROCESSOR
from lavislike_demo.plan import DemoPlan
from lavislike.errors import CheckpointError, LavislikeError

logger = logging.getLogger("lavislike")

BLIND_IMPORT = "imports=[lavislike_demo.baselines]"


def output_dir(plan: DemoPlan, rel: str, more: Sequence[str] = ()) -> Path:
    return Path(str(plan.config(rel, more).run.output_dir)).expanduser().resolve()


def train(plan: DemoPlan, rel: str, fresh: bool = True) -> dict:
    """Train ``rel``; returns the runner's summary plus ``seconds`` and ``best`` (weights file).

    Args:
        fresh: empty the run's output folder first, so ``model_best`` is this run's.

    Raises:
        CheckpointError: the run ended without a ``model_best.safetensors``.
    """
    from lavislike.runners.launch import run

    cfg = plan.config(rel)
    out = Path(str(cfg.run.output_dir)).expanduser().resolve()
    if fresh and out.is_dir():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    summary = run(cfg, cfg_path=plan.path(rel))
    best = out / "model_best.safetensors"
    if not best.is_file():
        raise CheckpointError(f"{rel}: training finished without {best} (did validation run?)")
    return {**summary, "seconds": time.perf_counter() - t0, "best": str(best)}


def evaluate(plan: DemoPlan, rel: str, blind: bool = False) -> dict:
    """Evaluate ``rel`` on its test split; ``blind``: the same with blank images.

    Returns:
        ``{"metrics": {...}, "output_dir": str, "seconds": float}``.
    """
    from lavislike.runners.launch import run

    more: list[str] = []
    if blind:
        more.append(BLIND_IMPORT)
        for name in plan.dataset_names(rel):
            more.append(f"datasets.{name}.vis_processor.eval.name={BLANK_PROCESSOR}")
        more.append(f"run.output_dir={output_dir(plan, rel)}_blind")
    cfg = plan.config(rel, more)
    out = Path(str(cfg.run.output_dir)).expanduser().resolve()
    if out.is_dir():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    summary = run(cfg, cfg_path=plan.path(rel), evaluate_only=True)
    results = summary.get("test") or {}
    if len(results) != 1:
        raise LavislikeError(f"{rel}: expected one test result, got {sorted(results)}")
    metrics = next(iter(results.values()))
    if not metrics:
        raise LavislikeError(f"{rel}: the evaluation returned no metrics")
    return {"metrics": metrics, "output_dir": str(out), "seconds": time.perf_counter() - t0}
