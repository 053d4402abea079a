"""Sharded training checkpoints for FSDP runs, written with ``torch.distributed.checkpoint`` (DCP).

Under ``run.fsdp`` every rank writes its own shards of the trainable weights and of the
optimizer state (``__<rank>_0.distcp``) into the checkpoint folder and rank 0 their index
(``.metadata``); nobody gathers a full copy. The rest of the folder (``training_state.pt``,
``rng_rank<R>.pt``, ``meta.json`` with ``"sharded": true``) and its atomic publication are
those of :mod:`lavislike.common.checkpoint`.

Loading goes through ``get_state_dict`` / ``set_state_dict``: each rank reads only the
pieces its own parameters need, so a checkpoint of W ranks resumes on any number of ranks,
with FSDP or without (one process, DDP). :func:`export_weights` turns one into a
``.safetensors`` file of full trainable weights, in one process with no process group.

Only tensors go into DCP; the optimizer's param groups (and any non-tensor state) go into
``training_state.pt``, because DCP reads non-tensor entries back with a full unpickler.
"""
from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lavislike.common.checkpoint import save_weights
from lavislike.errors import CheckpointError

MODEL, OPTIM = "model", "optim"  # top-level keys of the DCP state (DCP flattens to "model.<fqn>")


def _states(model: nn.Module, optimizer: torch.optim.Optimizer, keys: set[str]) -> tuple[dict, dict]:
    """This rank's trainable weights (FQN -> tensor or DTensor, filtered to ``keys``) and
    optimizer state keyed by FQN, as DCP wants them."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(model, optimizer)
    return {k: v for k, v in weights.items() if k in keys}, optim


def _split(optim: dict) -> tuple[dict, dict]:
    """``(tensors, rest)``: per-parameter tensors for DCP; param groups and the rest for torch.save."""
    tensors = {fqn: {k: v for k, v in s.items() if torch.is_tensor(v)} for fqn, s in optim["state"].items()}
    other = {fqn: {k: v for k, v in s.items() if not torch.is_tensor(v)} for fqn, s in optim["state"].items()}
    return tensors, {"param_groups": optim["param_groups"], "state": {k: v for k, v in other.items() if v}}


def save_sharded(folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 keys: set[str]) -> dict[str, Any]:
    """Every rank: write its shards of the weights named by ``keys`` and of the optimizer
    state into ``folder`` (a collective).

    Returns:
        ``{"optimizer": ...}``, the optimizer's non-tensor part, for ``training_state.pt``.
    """
    import torch.distributed.checkpoint as dcp

    weights, optim = _states(model, optimizer, keys)
    tensors, rest = _split(optim)
    with _alone_is_fine():
        dcp.save({MODEL: weights, OPTIM: tensors}, checkpoint_id=str(folder))
    return {"optimizer": rest}


@contextmanager
def _alone_is_fine():
    """Silence DCP's "assuming the intent is to save/load in a single process": it is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _dcp_load(state: dict, folder: Path, alone: bool = False) -> None:
    """``dcp.load`` in place: a collective over the process group if one is up and not
    ``alone``; otherwise this process reads the pieces it needs by itself."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    alone = alone or not (dist.is_available() and dist.is_initialized())
    with _alone_is_fine():
        dcp.load(state, checkpoint_id=str(folder), no_dist=alone)


def _saved_keys(folder: Path) -> set[str]:
    from torch.distributed.checkpoint import FileSystemReader

    return set(FileSystemReader(str(folder)).read_metadata().state_dict_metadata)


def load_sharded(folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, keys: set[str],
                 rest: dict[str, Any]) -> None:
    """Every rank: load the weights named by ``keys`` and the optimizer state of the sharded
    checkpoint ``folder`` (``rest``: :func:`save_sharded`'s ``optimizer`` entry), resharded
    to this run's layout (a collective when a process group is up).

    Raises:
        CheckpointError: the checkpoint's weights do not match ``keys``.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    folder = Path(folder)
    weights, optim = _states(model, optimizer, keys)  # the targets: this rank's shapes and shards
    saved = _saved_keys(folder)
    stored = {k[len(MODEL) + 1:] for k in saved if k.startswith(MODEL + ".")}
    missing, unknown = sorted(set(weights) - stored), sorted(stored - set(weights))
    if missing or unknown:
        raise CheckpointError(f"{folder} does not match the model: unknown keys {unknown[:5]}, "
                              f"missing trainable keys {missing[:5]}")
    tensors, _ = _split(optim)
    # parameters without saved state (no gradient yet when it was written) stay without
    # state, as in the uninterrupted run; get_state_dict filled in zeros for them
    tensors = {fqn: s for fqn, s in tensors.items() if all(f"{OPTIM}.{fqn}.{k}" in saved for k in s)}
    _dcp_load({MODEL: weights, OPTIM: tensors}, folder)
    state = {fqn: {**rest["state"].get(fqn, {}), **s} for fqn, s in tensors.items()}
    set_state_dict(model, optimizer, model_state_dict=weights,
                   optim_state_dict={"state": state, "param_groups": rest["param_groups"]},
                   options=StateDictOptions(strict=False))


def export_weights(folder: str | Path, out: str | Path) -> Path:
    """Write the full trainable weights of the sharded checkpoint ``folder`` to the
    safetensors file ``out`` (one process, no process group), which
    ``load_model(name, type, checkpoint=out)`` reads like a runner's ``model.safetensors``.

    Raises:
        CheckpointError: ``folder`` is not a sharded checkpoint.
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = Path(folder)
    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"{folder}: not a sharded checkpoint (no .metadata); "
                              "a full one has its weights in model.safetensors already")
    metadata = FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    weights = {k[len(MODEL) + 1:]: torch.empty(m.size, dtype=m.properties.dtype) for k, m in metadata.items()
               if k.startswith(MODEL + ".") and isinstance(m, TensorStorageMetadata)}
    _dcp_load({MODEL: weights}, folder, alone=True)
    meta_file = folder / "meta.json"
    step = json.loads(meta_file.read_text()).get("global_step") if meta_file.is_file() else None
    # "global_step" marks the file as trainable-only for load_model (as the runner's files)
    save_weights(out, weights, {"global_step": step, "source": folder.name})
    return Path(out)
