"""Which models ``lavislike serve`` loads: the command line's, or the demo's trained runs.

With no model named, the app serves what ``bash run_scripts/demo.sh`` trained: the stage-2
run (captions, VQA) and the stage-1 run (matching, search), read from their run folders
under ``$LAVISLIKE_OUTPUT`` (default ``./output``) with the config each run saved, so
nothing is downloaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from torch import nn

from lavislike.errors import CheckpointError, LavislikeError

# the demo's runs (projects/blip2_tiny run.output_dir below the output root), best first
DEMO_RUNS = ("blip2_tiny/pretrain_stage2", "blip2_tiny/pretrain_stage1")
BEST = "model_best.safetensors"
HOW_TO_GET_ONE = ("run `bash run_scripts/demo.sh` first (it trains the default model), or pass "
                  "--model NAME [--model-type TYPE] or --checkpoint PATH (`lavislike zoo models` lists models)")


class NoModelError(LavislikeError):
    """Nothing to serve: no model named and no demo run found."""


@dataclass
class Served:
    """One loaded model with its eval processors."""

    model: nn.Module
    vis: Callable  # PIL image -> (3, H, W) tensor
    txt: Callable  # str -> str
    label: str

    @property
    def can_caption(self) -> bool:
        return hasattr(self.model, "generate")

    @property
    def can_answer(self) -> bool:
        return hasattr(self.model, "predict_answers")

    @property
    def can_match(self) -> bool:
        return hasattr(self.model, "itm_logits") and hasattr(self.model, "retrieval_image_embeds")


def output_root() -> Path:
    return Path(os.environ.get("LAVISLIKE_OUTPUT", "output")).expanduser()


def demo_checkpoints(root: Optional[Path] = None) -> list[Path]:
    """The demo's best weights files that exist, stage 2 first."""
    root = output_root() if root is None else root
    return [root / run / BEST for run in DEMO_RUNS if (root / run / BEST).is_file()]


def processors_for(model: nn.Module, checkpoint: Optional[str | Path] = None) -> tuple[Callable, Callable]:
    """The eval processors saved with ``checkpoint``, else the model type's; the image size
    the model's own (a run may train at another size than its type's default)."""
    from lavislike.models.loading import model_preprocess
    from lavislike.processors import build_processor

    pre = model_preprocess(model.cfg, checkpoint)
    return (build_processor(pre.vis_processor.eval, "preprocess.vis_processor.eval"),
            build_processor(pre.text_processor.eval, "preprocess.text_processor.eval"))


def load_one(name: Optional[str], model_type: Optional[str], checkpoint: Optional[str | Path],
             device: str = "cpu") -> Served:
    """A model by registry name and type and/or from a checkpoint (its saved config names
    the model when ``name`` is None)."""
    from lavislike.models.loading import load_model, saved_config

    if name is None:
        saved = saved_config(str(checkpoint)) if checkpoint is not None else None
        if saved is None or not saved.get("arch"):
            raise CheckpointError(f"--checkpoint {checkpoint}: no config.yaml beside it names the model; "
                                  "add --model NAME")
        name = str(saved.arch)
    model = load_model(name, model_type, is_eval=True, device=device, checkpoint=checkpoint)
    vis, txt = processors_for(model, checkpoint)
    label = f"{name} ({model.cfg.model_type})" + (f" from {checkpoint}" if checkpoint else "")
    return Served(model, vis, txt, label)


def load_served(name: Optional[str] = None, model_type: Optional[str] = None,
                checkpoint: Optional[str | Path] = None, device: str = "cpu") -> list[Served]:
    """The models to serve: the one named, else the demo's runs.

    Raises:
        NoModelError: nothing named and no demo run under :func:`output_root`.
    """
    if name is not None or checkpoint is not None:
        return [load_one(name, model_type, checkpoint, device)]
    return [load_one(None, None, path, device) for path in require_demo_runs()]


def require_demo_runs() -> list[Path]:
    """:func:`demo_checkpoints`, or :class:`NoModelError` saying how to get one."""
    found = demo_checkpoints()
    if not found:
        raise NoModelError(f"no model to serve: {output_root() / DEMO_RUNS[0] / BEST} not found; {HOW_TO_GET_ONE}")
    return found


def pick(served: Sequence[Served], need: str) -> Optional[Served]:
    """The first served model that can do ``need`` (``caption``, ``answer``, ``match``)."""
    return next((s for s in served if getattr(s, f"can_{need}")), None)
