"""torch.distributed helpers that are all safe in a single process with no group."""
from __future__ import annotations

import atexit
import os
import time
from contextlib import contextmanager

import torch
import torch.distributed as dist

_rank_local = 0  # depth of nested rank_local() blocks


def is_dist() -> bool:
    return not _rank_local and dist.is_available() and dist.is_initialized()


@contextmanager
def rank_local():
    """Inside, this process computes as one process over its own data (world size 1, rank
    0): the models' losses then hold no collective, so ranks may run different numbers of
    forwards - validation over shards that split into different numbers of batches."""
    global _rank_local
    _rank_local += 1
    try:
        yield
    finally:
        _rank_local -= 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def resolve_device(want: str, key: str = "run.device") -> torch.device:
    """``auto`` (CUDA when there is one, else the CPU), ``cpu``, ``cuda`` (this process's
    local GPU) or any torch device string; ``key`` names the setting in the error."""
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        if not torch.cuda.is_available():
            from lavislike.errors import ConfigError

            raise ConfigError(f"{key}: 'cuda' requested but CUDA is not available; use 'cpu' or 'auto'")
        return torch.device("cuda", local_rank())
    return torch.device(want)


def _exchange_device(tensor: torch.Tensor) -> torch.device:
    # NCCL only moves CUDA tensors; gloo moves CPU ones
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else tensor.device


def gather_sizes(n: int, device: torch.device | None = None) -> list[int]:
    """Every rank's ``n`` (a batch size), in rank order (``[n]`` in one process).

    Batches differ across ranks when a rank dropped unreadable samples; the gathers below
    take these sizes so that they neither hang nor misalign.
    """
    if get_world_size() == 1:
        return [int(n)]
    t = torch.tensor([int(n)], dtype=torch.long, device=device)
    t = t.to(_exchange_device(t))
    out = [torch.empty_like(t) for _ in range(get_world_size())]
    dist.all_gather(out, t)
    return [int(x.item()) for x in out]


def _gather(tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenation over ranks of ``tensor`` whose dim 0 is ``sizes[rank]`` on each rank:
    padded to the largest size for ``all_gather``, then cut back."""
    tensor = tensor.contiguous()
    longest = max(sizes)
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        tensor = torch.cat([tensor, pad])
    out = [torch.empty_like(tensor) for _ in sizes]
    dist.all_gather(out, tensor)
    return torch.cat([t[:n] for t, n in zip(out, sizes)], 0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each rank the summed gradient of its own slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.start = sum(sizes[: get_rank()])
        ctx.n = sizes[get_rank()]
        return _gather(tensor, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on every slice
        return grad[ctx.start : ctx.start + ctx.n], None


def all_gather_with_grad(tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, keeping autograd to the local slice.

    Args:
        tensor: this rank's rows.
        sizes: every rank's row count (:func:`gather_sizes`); exchanged here when None.

    In one process this is the identity.
    """
    if get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor, sizes or gather_sizes(tensor.shape[0], tensor.device))


@torch.no_grad()
def all_gather_nograd(tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, detached (``tensor.detach()`` in
    one process: LAVIS gathers through a collective even on one GPU, which cuts the graph).

    Args:
        tensor: this rank's rows.
        sizes: every rank's row count (:func:`gather_sizes`); exchanged here when None.
    """
    if get_world_size() == 1:
        return tensor.detach()
    return _gather(tensor, sizes or gather_sizes(tensor.shape[0], tensor.device))


@torch.no_grad()
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of ``tensor`` (a detached copy; ``tensor`` itself is unchanged)."""
    out = tensor.detach().clone()
    if get_world_size() == 1:
        return out
    moved = out.to(_exchange_device(out))
    dist.all_reduce(moved)
    return moved.to(tensor.device)


def broadcast_rng_state(device: torch.device) -> torch.Tensor:
    """Rank 0's state of torch's global generator for ``device``, on every rank."""
    cuda = device.type == "cuda"
    state = torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state()
    if get_world_size() == 1:
        return state
    moved = state.to(_exchange_device(state))
    dist.broadcast(moved, src=0)
    return moved.cpu()


def all_gather_object(obj):
    """A list with ``obj`` from every rank (``[obj]`` in one process)."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def init_distributed_mode(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Join the process group described by ``torchrun``'s environment, if there is one.

    ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``; without them (a plain ``python`` launch) this does nothing and the
    run stays single-process. NCCL is used when CUDA is available, gloo otherwise.

    Args:
        backend: force a backend (``"nccl"`` or ``"gloo"``); default picks by device.
        timeout_s: collective timeout.

    Returns:
        True when a process group with more than one rank is (now) initialised.
    """
    import datetime

    if is_dist():
        return get_world_size() > 1
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        world_size=int(os.environ["WORLD_SIZE"]),
        rank=int(os.environ["RANK"]),
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    atexit.register(_leave_process_group)
    dist.barrier()
    return True


# how long a leaving process lets the group's worker threads run with the GIL free
_SETTLE_S = 0.1


def _leave_process_group() -> None:
    """Leave the group before the interpreter tears down (registered with ``atexit``).

    ``destroy_process_group`` does not stop gloo's worker threads while anything still holds
    the group (a DDP or FSDP module does until teardown). The worker that ran the last
    collective (the metrics ``broadcast_object`` that ends an evaluation) frees its work
    after waking the caller, and freeing tensors made in Python takes the GIL. At teardown
    Python ends a thread that asks for the GIL; the C++ runtime then aborts the finished
    process ("terminate called without an active exception", exit code -6) and torchrun
    fails the whole run. Sleeping here hands the GIL to that worker while it can still take
    it. Two ranks of `tests/runners/dist_exit_script.py` beside two busy loops on two cores
    aborted in 6 runs of 30 without the sleep, 1 in 50 with ``sleep(0)`` (a worker the
    scheduler had not run yet) and none in 50 with this one.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        time.sleep(_SETTLE_S)


def broadcast_object(obj):
    """``obj`` from rank 0 on every rank (``obj`` itself in one process)."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside a DDP / FSDP wrapper (``model`` itself when unwrapped)."""
    return getattr(model, "module", model)
