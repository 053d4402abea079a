"""Model wrapping for multi-process training: DDP by default, FSDP for huge trainable parts.

DDP (``run.distributed: true`` under ``torchrun``) replicates the model; gradients are
averaged across ranks, so W ranks with per-rank batch b train like one process with batch
W*b when the loss is a mean over the batch.

FSDP (``run.fsdp: true``) uses FSDP2 (``torch.distributed.fsdp.fully_shard``) on the
*trainable* transformer blocks only: every block (a module whose class name ends in
``Block`` or ``Layer``, or is listed in the model's ``_no_split_modules``) whose parameters
all train becomes one FSDP unit, so a unit never mixes frozen fp16 and trainable fp32
weights. Frozen parts (ViT-g, the LLM) are left alone, replicated as under DDP, and so are
the small trainable parameters outside blocks (query tokens, embeddings, projections,
``temp``): their gradients are averaged by one all-reduce per step
(:func:`sync_replicated_grads`). FSDP2 keeps the model's own modules and parameter names
(the sharded ones become ``DTensor``), so weight-decay groups and layer-wise lr decay work
unchanged. Methods other than ``forward`` that read a unit's weights are registered with
``register_fsdp_forward_method`` (:data:`FSDP_FORWARD_METHODS`). Checkpoints are sharded
(:mod:`lavislike.common.sharded_checkpoint`); a full (non-sharded) checkpoint still loads
into an FSDP run, each rank keeping its shard (:func:`load_full_state`,
:func:`load_optimizer_state`). See ``docs/distributed.md``.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from lavislike.common import dist as D

logger = logging.getLogger("lavislike")

# block methods that read the block's weights outside its forward (FSDP must gather them)
FSDP_FORWARD_METHODS = ("cross_kv", "text_states", "queries_from_states")


def _block_classes(model: nn.Module) -> set[type]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    return {type(m) for m in model.modules()
            if type(m).__name__ in names or type(m).__name__.endswith(("Block", "Layer"))}


def _fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The outermost blocks whose parameters all train (and share one dtype)."""
    classes = _block_classes(model)
    units: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if type(module) not in classes or any(name.startswith(u + ".") for u in units):
            continue
        params = list(module.parameters())
        if params and all(p.requires_grad for p in params) and len({p.dtype for p in params}) == 1:
            units[name] = module
    return list(units.values())


def _shard(model: nn.Module) -> int:
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    units = _fsdp_units(model)
    for unit in units:
        fully_shard(unit)
        for method in FSDP_FORWARD_METHODS:
            if callable(getattr(unit, method, None)):
                register_fsdp_forward_method(unit, method)
    return len(units)


def wrap_model(model: nn.Module, device: torch.device, *, fsdp: bool = False,
               find_unused_parameters: bool = False) -> tuple[nn.Module, bool]:
    """``(wrapped model, is_fsdp)``; the model itself in a single process.

    With FSDP the model is sharded in place and returned itself (FSDP2 wraps no module).
    """
    if D.get_world_size() == 1:
        if fsdp:
            logger.info("run.fsdp ignored: single process")
        return model, False
    if not any(p.requires_grad for p in model.parameters()):
        return model, False  # evaluation only: nothing to synchronise
    if fsdp:
        n = _shard(model)
        if n == 0:
            logger.warning("run.fsdp: no trainable block to shard; training replicated (like DDP)")
        logger.info("FSDP: %d trainable blocks sharded; %d trainable tensors replicated", n,
                    len(replicated_params(model)))
        return model, True
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               find_unused_parameters=find_unused_parameters), False


def _is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def replicated_params(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters FSDP does not shard (their gradients need an all-reduce)."""
    return [p for p in model.parameters() if p.requires_grad and not _is_sharded(p)]


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def no_grad_sync(model: nn.Module, fsdp: bool, sync: bool):
    """Accumulate gradients locally (no reduction) unless ``sync``: DDP's ``no_sync``, or
    FSDP2's ``set_requires_gradient_sync(False)`` (replicated parameters are reduced once
    per step by :func:`sync_replicated_grads` anyway)."""
    if sync or D.get_world_size() == 1:
        yield
        return
    if not fsdp:
        with model.no_sync() if hasattr(model, "no_sync") else nullcontext():
            yield
        return
    with _each_unit(model, lambda u: u.set_requires_gradient_sync(False, recurse=False),
                    lambda u: u.set_requires_gradient_sync(True, recurse=False)):
        yield


@contextmanager
def _each_unit(model: nn.Module, enter, leave):
    units = _fsdp_modules(model)
    for unit in units:
        enter(unit)
    try:
        yield
    finally:
        for unit in units:
            leave(unit)


def _gather_for_good(unit) -> None:
    unit.unshard()
    unit.set_reshard_after_forward(False, recurse=False)


def _shard_again(unit) -> None:
    unit.set_reshard_after_forward(True, recurse=False)
    unit.reshard()


def sync_replicated_grads(model: nn.Module) -> None:
    """Average the replicated trainable parameters' gradients over ranks (DDP's job).

    A parameter that got no gradient on any rank keeps ``grad=None`` (AdamW skips it, as
    in one process); one that got it on some ranks only counts zeros for the others.
    """
    params = replicated_params(model)
    if not params or D.get_world_size() == 1:
        return
    import torch.distributed as dist

    # one all-reduce per step: the gradients (zeros where this rank has none), then how
    # many ranks had each one
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                      for p in params] + [has])
    dist.all_reduce(flat)
    world = D.get_world_size()
    offset = 0
    for p, ranks in zip(params, flat[-len(params):].tolist()):
        n = p.numel()
        if ranks > 0:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_((flat[offset:offset + n] / world).view_as(p.grad))
        offset += n


def clip_grad_norm(params: list[torch.Tensor], max_norm: float, fsdp: bool) -> torch.Tensor:
    """Clip to a global L2 norm; with FSDP the sharded gradients' squares are summed over
    ranks and the replicated ones counted once (torch's ``clip_grad_norm_`` semantics)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not fsdp:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    if not grads:
        return torch.zeros(())
    sharded = [g.to_local() for g in grads if _is_sharded(g)]
    plain = [g for g in grads if not _is_sharded(g)]
    device = grads[0].device if not sharded else sharded[0].device
    sq_sharded = sum((g.float().pow(2).sum() for g in sharded), torch.zeros((), device=device))
    sq = D.all_reduce_sum(sq_sharded.double()) + sum((g.double().pow(2).sum() for g in plain),
                                                     torch.zeros((), dtype=torch.float64, device=device))
    total = sq.sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        (g.to_local() if _is_sharded(g) else g).mul_(coef.to(g.dtype))
    return total


def sharded_grad_scaler(device_type: str):
    """A grad scaler for FSDP fp16: inf checks agree across ranks (``ShardedGradScaler``
    all-reduces them), and sharded (DTensor) and replicated gradients are unscaled in
    separate calls (one foreach call may not mix them)."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    class _Scaler(ShardedGradScaler):
        def _unscale_grads_(self, optimizer, inv_scale, found_inf, allow_fp16=True):
            groups: dict[tuple, list[torch.Tensor]] = {}
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        local = p.grad.to_local() if _is_sharded(p.grad) else p.grad  # a view: in place
                        groups.setdefault((local.device, local.dtype), []).append(local)
            found: dict[torch.device, torch.Tensor] = {}
            with torch.no_grad():
                for (device, _), grads in groups.items():
                    flag = found.setdefault(device, found_inf.to(device))
                    torch._amp_foreach_non_finite_check_and_unscale_(grads, flag, inv_scale.to(device))
            return found or {found_inf.device: found_inf}

    return _Scaler(device_type)


@contextmanager
def full_params(model: nn.Module, fsdp: bool):
    """Full parameters on every rank while evaluating: each unit is gathered once and
    stays whole, so ranks may run different numbers of forwards (a shard of the split,
    generation stopping early) without collectives."""
    if not fsdp:
        yield
        return
    with _each_unit(model, _gather_for_good, _shard_again):
        yield


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if _is_sharded(t) else t


def gather_full(state: dict[str, torch.Tensor], keep: bool = True) -> dict[str, torch.Tensor]:
    """``state`` with sharded tensors gathered whole (a collective: every rank calls it).

    ``keep=False`` on the ranks that do not write it: they take part in each gather and drop
    the result at once, so a whole model (a frozen 7B LLM in a fine-tuned folder) is held in
    host memory once per node's writer, not once per rank; they get ``{}``.
    """
    out = {}
    for k, v in state.items():
        whole = _full(v)
        if keep:
            out[k] = whole.detach().cpu()
    return out


def _like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """This rank's shard of the whole tensor ``full`` laid out as ``ref`` (no communication)."""
    if not _is_sharded(ref):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(ref.device, ref.dtype), ref.device_mesh, ref.placements, src_data_rank=None)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, fsdp: bool) -> None:
    if fsdp:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        state = dict(state, state={i: {k: _like(v, params[int(i)]) if torch.is_tensor(v) and v.ndim else v
                                       for k, v in s.items()} for i, s in state["state"].items()})
    optimizer.load_state_dict(state)


def load_full_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full (unsharded) weights into an FSDP model: each rank keeps its shard."""
    own = model.state_dict()
    with torch.no_grad():
        for name, full in state.items():
            target = own[name]
            if _is_sharded(target):
                target.to_local().copy_(_like(full, target).to_local())
            else:
                target.copy_(full)
