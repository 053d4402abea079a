"""One logger setup, metrics as JSON lines (+ TensorBoard when installed), curve plots."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from lavislike.common import dist as D

LOGGER_NAME = "lavislike"


def setup_logging(output_dir: str | Path | None = None, level: str | int = "INFO") -> logging.Logger:
    """Configure the ``lavislike`` logger once per process.

    Rank 0 logs at ``level`` to stderr; other ranks only log warnings, so multi-process
    output stays readable. With ``output_dir``, rank 0 also appends to ``<output_dir>/log.txt``.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level if D.is_main_process() else logging.WARNING)
    logger.propagate = False
    fmt = logging.Formatter(f"%(asctime)s [rank{D.get_rank()}] %(levelname)s %(message)s", "%H:%M:%S")
    if not any(getattr(h, "_lavislike", None) == "stream" for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(fmt)
        handler._lavislike = "stream"
        logger.addHandler(handler)
    if output_dir is not None and D.is_main_process():
        path = str(Path(output_dir) / "log.txt")
        for h in list(logger.handlers):
            if getattr(h, "_lavislike", None) == "file":
                logger.removeHandler(h)
                h.close()
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(path)
        fh.setFormatter(fmt)
        fh._lavislike = "file"
        logger.addHandler(fh)
    return logger


class MetricsWriter:
    """Append metrics to ``metrics.jsonl`` (and TensorBoard if installed); rank 0 only.

    Each line is ``{"split": ..., "step": ..., "epoch": ..., <metric>: value, ...}``.
    """

    def __init__(self, output_dir: str | Path, tensorboard: bool = True):
        self.enabled = D.is_main_process()
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb = None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))
                except ImportError:  # tensorboard is optional
                    self._tb = None

    def log(self, split: str, step: int, values: dict[str, Any], epoch: int | None = None) -> None:
        if not self.enabled:
            return
        row = {"split": split, "step": int(step), "epoch": epoch}
        row.update({k: (float(v) if isinstance(v, (int, float)) else v) for k, v in values.items()})
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(metrics_path: str | Path, png_path: str | Path) -> Path | None:
    """Plot training loss and lr against step (plus validation ``agg_metrics``) to a PNG.

    Returns the PNG path, or None when there is nothing to plot or matplotlib (the
    ``plots`` extra) is not installed.
    """
    rows = read_metrics(metrics_path)
    train = [r for r in rows if r["split"] == "train" and "loss" in r]
    if not train:
        return None
    try:
        import matplotlib
    except ImportError:
        logging.getLogger("lavislike").info("no %s: pip install 'lavislike[plots]' for curve PNGs", png_path)
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in rows if r["split"] != "train" and "agg_metrics" in r]
    ncols = 3 if evals else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.6))
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["loss"] for r in train], lw=1)
    axes[0].set(title="training loss", xlabel="step")
    for key in sorted({k for r in train for k in r if k.startswith("loss_")}):
        pts = [(r["step"], r[key]) for r in train if key in r]
        axes[0].plot(*zip(*pts), lw=0.8, alpha=0.7, label=key)
    if any(k.startswith("loss_") for r in train for k in r):
        axes[0].legend(fontsize=7)
    axes[1].plot(steps, [r.get("lr", float("nan")) for r in train], lw=1, color="tab:orange")
    axes[1].set(title="learning rate", xlabel="step")
    if evals:
        for split in sorted({r["split"] for r in evals}):
            pts = [(r["step"], r["agg_metrics"]) for r in evals if r["split"] == split]
            axes[2].plot(*zip(*pts), marker="o", label=split)
        axes[2].set(title="validation agg_metrics", xlabel="step")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
