"""Training checkpoints that survive a kill at any moment, and resume from them.

A checkpoint is a folder ``<output>/checkpoints/step_<N>/`` holding

- ``model.safetensors``: the trainable weights only (``model.trainable_state_dict()``),
- ``training_state.pt``: optimizer, lr schedule and grad-scaler states (tensors, numbers,
  lists and dicts only, so ``torch.load(weights_only=True)`` reads it),
- ``rng_rank<R>.pt``: python / numpy / torch / CUDA RNG states of every rank,
- ``meta.json``: data position (epoch, step within it, sampler seed), global step, best
  metric so far.

It is written into a hidden temporary folder that is renamed into place in one step, and
``checkpoints/latest`` (itself replaced atomically) names the newest complete one, so an
interrupted save leaves the previous checkpoint as the one resume picks.
"""
from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lavislike.common import dist as D
from lavislike.common.io import save_safetensors_atomic, write_json_atomic, write_text_atomic
from lavislike.errors import CheckpointError

logger = logging.getLogger("lavislike")

CKPT_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d+)$")


# -- weights ------------------------------------------------------------------------
def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's ``trainable_state_dict()``, or its ``requires_grad`` parameters."""
    model = D.unwrap_model(model)
    if hasattr(model, "trainable_state_dict"):
        return dict(model.trainable_state_dict())
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Clone tensors that share storage: safetensors refuses tied tensors."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, v in state.items():
        v = v.detach()
        key = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else (id(v), 0)
        out[k] = v.clone() if key in seen else v
        seen.add(key)
    return out


def save_weights(path: str | Path, state: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Write ``state`` as safetensors (CPU tensors, atomically)."""
    state = {k: v.detach().to("cpu") for k, v in _untie(state).items()}
    save_safetensors_atomic(state, path, metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_trainable_weights(model: torch.nn.Module, path: str | Path,
                           load_fn: Callable[[dict], None] | None = None) -> None:
    """Load a safetensors file of trainable weights into ``model`` (strict about its keys).

    Raises:
        CheckpointError: the file is missing, or names a parameter the model does not have,
            or lacks one of the model's trainable parameters.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint weights not found: {path}")
    state = load_file(str(path))
    model = D.unwrap_model(model)
    expected = set(trainable_state_dict(model))
    unknown = sorted(set(state) - set(model.state_dict()))
    missing = sorted(expected - set(state))
    if unknown or missing:
        raise CheckpointError(
            f"{path} does not match the model: unknown keys {unknown[:5]}, missing trainable keys {missing[:5]}"
        )
    if load_fn is not None:
        load_fn(state)
    else:
        model.load_state_dict(state, strict=False)


# -- RNG ------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA RNG states as weights_only-safe objects."""
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python_version": version,
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": gauss,
        "numpy_name": np_name,
        "numpy": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate((state["python_version"], tuple(int(x) for x in state["python"].tolist()),
                     state["python_gauss"]))
    np.random.set_state((state["numpy_name"], state["numpy"].numpy().astype(np.uint32),
                         state["numpy_pos"], state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- training checkpoints -------------------------------------------------------------
def save_checkpoint(output_dir: str | Path, global_step: int, *, model_state: dict[str, torch.Tensor],
                    train_state: dict[str, Any], meta: dict[str, Any], keep_last: int = 2) -> Path:
    """Write a resumable checkpoint; call on every rank (each saves its own RNG state).

    Args:
        output_dir: the run folder; checkpoints go to ``<output_dir>/checkpoints``.
        global_step: optimizer steps done; names the folder.
        model_state: trainable weights (rank 0's copy is written).
        train_state: ``{"optimizer": ..., "scheduler": ..., "scaler": ...}`` state dicts.
        meta: JSON-serialisable data position and bookkeeping.
        keep_last: older ``step_*`` folders beyond this many are deleted.

    Returns:
        The checkpoint folder.
    """
    root = Path(output_dir) / CKPT_DIR
    final = root / f"step_{global_step:09d}"
    tmp = root / f".tmp_step_{global_step:09d}"
    if D.is_main_process():
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    D.barrier()
    torch.save(capture_rng_state(), tmp / f"rng_rank{D.get_rank()}.pt")
    D.barrier()
    if D.is_main_process():
        save_weights(tmp / "model.safetensors", model_state, {"global_step": global_step})
        torch.save(train_state, tmp / "training_state.pt")
        write_json_atomic(tmp / "meta.json", {**meta, "global_step": global_step,
                                               "world_size": D.get_world_size()})
        if final.exists():  # the same step saved again (e.g. after a resume): swap it out
            trash = root / f".old_{final.name}"
            shutil.rmtree(trash, ignore_errors=True)
            final.rename(trash)
            tmp.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(final)
        write_text_atomic(root / "latest", final.name)
        for old in _step_dirs(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    D.barrier()
    return final


def _step_dirs(root: Path) -> list[Path]:
    dirs = [p for p in root.glob("step_*") if _STEP_DIR.match(p.name) and (p / "meta.json").is_file()]
    return sorted(dirs, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def find_latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``output_dir`` (or None)."""
    root = Path(output_dir) / CKPT_DIR
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if (named / "meta.json").is_file():
            return named
    dirs = _step_dirs(root) if root.is_dir() else []
    return dirs[-1] if dirs else None


def load_checkpoint(ckpt_dir: str | Path, model: torch.nn.Module,
                    load_fn: Callable[[dict], None] | None = None) -> tuple[dict, dict]:
    """Load the weights into ``model`` and this rank's RNG state; return (train_state, meta).

    The caller restores optimizer / scheduler / scaler from ``train_state``.

    Raises:
        CheckpointError: the folder is incomplete or was written with another world size.
    """
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / "meta.json").is_file():
        raise CheckpointError(f"not a complete checkpoint folder (no meta.json): {ckpt_dir}")
    meta = json.loads((ckpt_dir / "meta.json").read_text())
    load_trainable_weights(model, ckpt_dir / "model.safetensors", load_fn)
    train_state = torch.load(ckpt_dir / "training_state.pt", map_location="cpu", weights_only=True)
    rng_file = ckpt_dir / f"rng_rank{D.get_rank()}.pt"
    if rng_file.is_file() and meta.get("world_size", 1) == D.get_world_size():
        restore_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
    else:
        logger.warning("resume: %s has no RNG state for rank %d of %d (saved with %s ranks); "
                       "random streams will differ from the original run", ckpt_dir, D.get_rank(),
                       D.get_world_size(), meta.get("world_size"))
    logger.info("resumed from %s (global step %d)", ckpt_dir, meta["global_step"])
    return train_state, meta
