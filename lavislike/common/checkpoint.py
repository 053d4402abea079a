"""Training checkpoints that survive a kill at any moment, and resume from them.

A checkpoint is a folder ``<output>/checkpoints/step_<N>/`` holding

- ``model.safetensors``: the trainable weights only (``model.trainable_state_dict()``),
- ``training_state.pt``: optimizer, lr schedule and grad-scaler states (tensors, numbers,
  lists and dicts only, so ``torch.load(weights_only=True)`` reads it),
- ``rng_rank<R>.pt``: python / numpy / torch / CUDA RNG states of every rank,
- ``meta.json``: data position (epoch, step within it, sampler seed), global step, best
  metric so far.

A *sharded* checkpoint (FSDP runs, :mod:`lavislike.common.sharded_checkpoint`) holds the
weights and the optimizer state as ``torch.distributed.checkpoint`` shards instead
(``.metadata`` + ``__<rank>_0.distcp``, each rank writing its own; ``model.safetensors``
only where full weights were asked for) and says ``"sharded": true`` in ``meta.json``.

It is written into a hidden temporary folder whose files (and the folder) are flushed to
the disk before it is renamed into place in one step, and ``checkpoints/latest`` (itself
replaced atomically) names the newest complete one, so an interrupted save leaves the
previous checkpoint as the one resume picks. A checkpoint damaged afterwards (a truncated
or garbled file, a missing one) is skipped by :func:`load_latest_checkpoint` with a warning
naming the file, and resume falls back to the one before.
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
from lavislike.common.io import (
    fsync_dir,
    fsync_file,
    save_safetensors_atomic,
    write_json_atomic,
    write_text_atomic,
)
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
        CheckpointError: the file is missing or damaged, or names a parameter the model
            does not have, or lacks one of the model's trainable parameters.
    """
    from safetensors.torch import load_file

    path = Path(path)
    apply_trainable_weights(model, _read(path, lambda f: load_file(str(f))), path, load_fn)


def apply_trainable_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path,
                            load_fn: Callable[[dict], None] | None = None) -> None:
    """Load ``state`` (read from ``path``, named in errors) into ``model``; see :func:`load_trainable_weights`."""
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
def save_checkpoint(output_dir: str | Path, global_step: int, *, model_state: dict[str, torch.Tensor] | None,
                    train_state: dict[str, Any], meta: dict[str, Any], keep_last: int = 2,
                    write_shards: Callable[[Path], dict[str, Any]] | None = None) -> Path:
    """Write a resumable checkpoint; call on every rank (each saves its own RNG state).

    Args:
        output_dir: the run folder; checkpoints go to ``<output_dir>/checkpoints``.
        global_step: optimizer steps done; names the folder.
        model_state: trainable weights (rank 0's copy is written); None: no ``model.safetensors``.
        train_state: ``{"optimizer": ..., "scheduler": ..., "scaler": ...}`` state dicts.
        meta: JSON-serialisable data position and bookkeeping.
        keep_last: older ``step_*`` folders beyond this many are deleted.
        write_shards: a sharded checkpoint: called on every rank with the temporary folder
            to write its shards; returns entries added to ``training_state.pt``.

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
    if write_shards is not None:
        train_state = {**train_state, **write_shards(tmp)}
    D.barrier()  # every rank's files are written: meta.json, the mark of a complete folder, comes last
    if D.is_main_process():
        if model_state is not None:
            save_weights(tmp / "model.safetensors", model_state, {"global_step": global_step})
        torch.save(train_state, tmp / "training_state.pt")
        write_json_atomic(tmp / "meta.json", {**meta, "global_step": global_step, "world_size": D.get_world_size(),
                                               **({"sharded": True} if write_shards is not None else {})})
        # the rename below publishes the folder: its files must be on the disk first, or a
        # power cut can leave a complete-looking checkpoint holding empty files
        for f in tmp.iterdir():
            fsync_file(f)
        fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. after a resume): swap it out
            trash = root / f".old_{final.name}"
            shutil.rmtree(trash, ignore_errors=True)
            final.rename(trash)
            tmp.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(final)
        fsync_dir(root)
        write_text_atomic(root / "latest", final.name)
        for old in _step_dirs(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    D.barrier()
    return final


def _step_dirs(root: Path, complete: bool = True) -> list[Path]:
    """``step_<N>`` folders by step; ``complete``: only those with a ``meta.json``."""
    dirs = [p for p in root.glob("step_*") if _STEP_DIR.match(p.name) and (not complete or (p / "meta.json").is_file())]
    return sorted(dirs, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def is_checkpoint_folder(path: str | Path) -> bool:
    """``path`` is one checkpoint (``step_<N>`` or a folder with ``meta.json``), not a run folder."""
    path = Path(path)
    return bool(_STEP_DIR.match(path.name)) or (path / "meta.json").exists()


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


def _read(path: Path, reader: Callable[[Path], Any]) -> Any:
    """``reader(path)``; a missing or unreadable file is a one-line CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return reader(path)
    except Exception as exc:  # truncated / garbled: safetensors, pickle, zip and JSON errors alike
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}{': ' + detail if detail else ''})") from None


def _torch_file(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(ckpt_dir: str | Path) -> dict[str, Any]:
    """Read every file of a checkpoint folder into memory, touching no model.

    Returns:
        ``{"meta", "weights", "train_state", "rng"}`` (``weights``: None for a sharded
        checkpoint, whose shards are only checked to be there in full; ``rng``: this rank's
        state, or None when the checkpoint was saved with fewer ranks).

    Raises:
        CheckpointError: a file is missing, truncated or garbled (the message names it).
    """
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    meta = _read(ckpt_dir / "meta.json", lambda f: json.loads(f.read_text()))
    if not isinstance(meta, dict) or not isinstance(meta.get("global_step"), int):
        raise CheckpointError(f"{ckpt_dir / 'meta.json'}: unreadable (no global_step)")
    # a sharded checkpoint's weights are read by the model's ranks, each its own pieces
    weights = (_check_shards(ckpt_dir) if meta.get("sharded") else
               _read(ckpt_dir / "model.safetensors", lambda f: load_file(str(f))))
    out = {"meta": meta, "weights": weights,
           "train_state": _read(ckpt_dir / "training_state.pt", _torch_file), "rng": None}
    saved_world = int(meta.get("world_size", 1))
    # every rank checks every rank's file, so that all of them judge a checkpoint alike
    rng = [_read(ckpt_dir / f"rng_rank{r}.pt", _torch_file) for r in range(saved_world)]
    if D.get_rank() < saved_world:
        out["rng"] = rng[D.get_rank()]
    return out


def _check_shards(ckpt_dir: Path) -> None:
    """A sharded checkpoint's index reads back and every shard file it names is there in full."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata = _read(ckpt_dir / ".metadata", lambda f: FileSystemReader(str(f.parent)).read_metadata())
    for info in metadata.storage_data.values():
        shard = ckpt_dir / info.relative_path
        if not shard.is_file():
            raise CheckpointError(f"{shard}: missing")
        if shard.stat().st_size < info.offset + info.length:
            raise CheckpointError(f"{shard}: truncated ({shard.stat().st_size} bytes, the index needs "
                                  f"{info.offset + info.length})")


LoadShards = Callable[[Path, dict], None]


def load_checkpoint(ckpt_dir: str | Path, model: torch.nn.Module,
                    load_fn: Callable[[dict], None] | None = None,
                    load_shards: LoadShards | None = None) -> tuple[dict, dict]:
    """Load the weights into ``model`` and this rank's RNG state; return (train_state, meta).

    The caller restores optimizer / scheduler / scaler from ``train_state`` - except for a
    sharded checkpoint, which ``load_shards(folder, train_state)`` loads (weights and
    optimizer state together). Every file is read (shards: checked) before the model is
    touched, so a damaged checkpoint leaves the model as it was.

    Raises:
        CheckpointError: a file is missing or damaged, or the weights do not fit the model.
    """
    ckpt_dir = Path(ckpt_dir)
    return _apply(ckpt_dir, read_checkpoint(ckpt_dir), model, load_fn, load_shards)


def _apply(ckpt_dir: Path, contents: dict[str, Any], model: torch.nn.Module,
           load_fn: Callable[[dict], None] | None, load_shards: LoadShards | None) -> tuple[dict, dict]:
    meta = contents["meta"]
    if contents["weights"] is not None:
        apply_trainable_weights(model, contents["weights"], ckpt_dir / "model.safetensors", load_fn)
    elif load_shards is None:
        raise CheckpointError(f"{ckpt_dir}: a sharded (torch.distributed.checkpoint) checkpoint, loaded by "
                              "the runner; export its weights with lavislike.common.sharded_checkpoint.export_weights")
    else:
        load_shards(ckpt_dir, contents["train_state"])
    if contents["rng"] is not None:
        # rank 0's generator draws what is drawn for the global batch (ITM negatives): it
        # continues at another world size too
        restore_rng_state(contents["rng"])
    if int(meta.get("world_size", 1)) != D.get_world_size():
        logger.warning("resume: %s was saved with %s ranks, this run has %d; rank %d %s, and per-rank "
                       "random streams (dropout, augmentation) differ from the original run", ckpt_dir,
                       meta.get("world_size"), D.get_world_size(), D.get_rank(),
                       "continues its RNG state" if contents["rng"] is not None else "has no saved RNG state")
    logger.info("resumed from %s (global step %d)", ckpt_dir, meta["global_step"])
    return contents["train_state"], meta


def load_latest_checkpoint(output_dir: str | Path, model: torch.nn.Module,
                           load_fn: Callable[[dict], None] | None = None,
                           load_shards: LoadShards | None = None) -> tuple[Path, dict, dict] | None:
    """Resume from the newest checkpoint under ``output_dir`` that reads back whole.

    A newer one that is damaged (truncated, garbled or missing file) is skipped with a
    warning naming the file and what is wrong; the previous complete one is used.

    Returns:
        ``(folder, train_state, meta)``, or None when there is no checkpoint at all.

    Raises:
        CheckpointError: checkpoints exist but none of them can be read.
    """
    root = Path(output_dir) / CKPT_DIR
    found = _step_dirs(root, complete=False) if root.is_dir() else []
    problems = []
    for ckpt in reversed(found):  # newest first, damaged ones (even without meta.json) included
        try:
            contents = read_checkpoint(ckpt)
        except CheckpointError as exc:
            problems.append(str(exc))
            logger.warning("resume: skipping damaged checkpoint %s: %s", ckpt.name, exc)
            continue
        return (ckpt, *_apply(ckpt, contents, model, load_fn, load_shards))
    if problems:
        raise CheckpointError(f"no readable checkpoint in {root}: {'; '.join(problems)}")
    return None
