"""Model wrapping for multi-process training: DDP by default, FSDP for huge trainable parts.

DDP (``run.distributed: true`` under ``torchrun``) replicates the model; gradients are
averaged across ranks, so W ranks with per-rank batch b train like one process with batch
W*b when the loss is a mean over the batch.

FSDP (``run.fsdp: true``) shards parameters, gradients and optimizer state across ranks.
Use it to fine-tune with an unfrozen ViT-g (1B parameters): every transformer block
(a module whose class name ends in ``Block`` or ``Layer``, or is listed in the model's
``_no_split_modules``) becomes one FSDP unit; ``use_orig_params=True`` lets frozen and
trainable parameters share a unit and keeps parameter names (so weight-decay groups and
layer-wise lr decay still work). Checkpoints gather full weights / optimizer state on
rank 0 (``FULL_STATE_DICT``), so they load into a non-sharded run too. See
``docs/distributed.md``.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext

import torch
from torch import nn

from lavislike.common import dist as D

logger = logging.getLogger("lavislike")


def _block_classes(model: nn.Module) -> set[type]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    return {type(m) for m in model.modules()
            if type(m).__name__ in names or type(m).__name__.endswith(("Block", "Layer"))}


def wrap_model(model: nn.Module, device: torch.device, *, fsdp: bool = False,
               find_unused_parameters: bool = False) -> tuple[nn.Module, bool]:
    """``(wrapped model, is_fsdp)``; the model itself in a single process."""
    if D.get_world_size() == 1:
        if fsdp:
            logger.info("run.fsdp ignored: single process")
        return model, False
    if not any(p.requires_grad for p in model.parameters()):
        return model, False  # evaluation only: nothing to synchronise
    if fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        blocks = _block_classes(model)
        logger.info("FSDP: sharding %d block classes: %s", len(blocks), sorted(c.__name__ for c in blocks))
        wrapped = FSDP(model, auto_wrap_policy=ModuleWrapPolicy(blocks) if blocks else None,
                       use_orig_params=True, device_id=device if device.type == "cuda" else None)
        return wrapped, True
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               find_unused_parameters=find_unused_parameters), False


def full_params(model: nn.Module, fsdp: bool):
    """Context in which an FSDP model's full parameters are materialised (eval, generate)."""
    if not fsdp:
        return nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP.summon_full_params(model, writeback=False, recurse=True)


def gather_full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) state dict of an FSDP model, on rank 0 (empty elsewhere)."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    cfg = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, cfg):
        return model.state_dict()


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> dict:
    """Optimizer state to checkpoint (FSDP: the full state gathered to rank 0)."""
    if not fsdp:
        return optimizer.state_dict()
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP.optim_state_dict(model, optimizer)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        state = FSDP.optim_state_dict_to_load(model, optimizer, state)
    optimizer.load_state_dict(state)


def load_full_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full (unsharded) weights into an FSDP model on every rank (strict=False)."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(rank0_only=False)):
        model.load_state_dict(state, strict=False)
