"""Freezing and precision: the one place every model part uses for both.

A frozen module has no trainable parameters, stays in eval mode whatever its parents'
``train()`` does (one mechanism: :func:`freeze` gives the module itself a ``train`` that
keeps it in eval, so any parent, ours or not, needs nothing), and runs without autograd (``torch.no_grad()``, not
``inference_mode``: its outputs feed trainable parts and must be usable in autograd).

Example:
    >>> encoder = freeze(cast_precision(encoder, "fp16"))
    >>> with frozen_forward(encoder):
    ...     feats = encoder(images)
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
from torch import nn

from lavislike.errors import ConfigError

__all__ = [
    "PRECISIONS",
    "cast_precision",
    "cpu_fp16_fallback",
    "freeze",
    "frozen_forward",
    "is_frozen",
    "parse_precision",
    "unfreeze",
]

PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
# Spellings people bring from torch / transformers configs.
_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "amp": "fp16",  # LAVIS configs say vit_precision: amp for autocast-era fp16
}
_FROZEN_ATTR = "_lavislike_frozen"
_FORCE_ATTR = "_lavislike_force_precision"
_cpu_fp16_warned = False


# -- precision ---------------------------------------------------------------------
def parse_precision(precision: str | torch.dtype) -> torch.dtype:
    """The dtype named by ``"fp32" | "fp16" | "bf16"`` (or a ``torch.dtype``).

    Raises:
        ConfigError: for any other value, listing the valid ones.
    """
    if isinstance(precision, torch.dtype):
        if precision in PRECISIONS.values():
            return precision
        raise ConfigError(
            f"precision {precision} is not supported; valid: {', '.join(PRECISIONS)}"
        )
    key = str(precision).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in PRECISIONS:
        from lavislike.common.suggest import did_you_mean

        raise ConfigError(
            f"precision '{precision}' is not valid.{did_you_mean(key, PRECISIONS)} "
            f"Valid: {', '.join(PRECISIONS)}"
        )
    return PRECISIONS[key]


def cast_precision(
    module: nn.Module, precision: str | torch.dtype, *, force: bool = False
) -> nn.Module:
    """Cast every floating parameter and buffer of ``module`` to ``precision``.

    fp16 is kept as asked even when the module sits on the CPU now, because models are
    usually built on the CPU and then moved to a GPU; the CPU fallback happens at the
    first forward instead (:func:`cpu_fp16_fallback`), unless ``force`` is set.

    Args:
        module: the module to cast in place.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (or the torch dtype).
        force: keep fp16 even when the module later runs on the CPU.

    Returns:
        ``module`` (cast in place).
    """
    dtype = parse_precision(precision)
    module.to(dtype=dtype)  # .to(dtype) only touches floating tensors
    object.__setattr__(module, _FORCE_ATTR, bool(force))
    return module


def cpu_fp16_fallback(module: nn.Module, device: torch.device) -> None:
    """Turn an fp16 ``module`` about to run on the CPU into fp32 (warning once).

    CPU fp16 matmuls are slow and some kernels lack them; bf16 and fp32 are left alone,
    and so is a module cast with ``cast_precision(..., force=True)``.

    Args:
        module: the module about to run.
        device: where its inputs live.
    """
    global _cpu_fp16_warned
    if device.type != "cpu" or getattr(module, _FORCE_ATTR, False):
        return
    param = next(module.parameters(), None)
    if param is None or param.dtype != torch.float16 or param.device.type != "cpu":
        return
    if not _cpu_fp16_warned:
        _cpu_fp16_warned = True
        warnings.warn(
            f"lavislike: {type(module).__name__} is fp16 on the CPU, where fp16 is slow or "
            "unsupported; running it in fp32 instead (cast_precision(..., force=True) "
            "keeps fp16)",
            RuntimeWarning,
            stacklevel=3,
        )
    module.float()


# -- freezing ----------------------------------------------------------------------
class _StayEval:
    """A frozen module's own ``train``: eval whatever the mode asked (a class, not a bound
    function, so that the module survives pickling and ``copy.deepcopy`` still frozen)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.module, False)


def freeze(module: nn.Module) -> nn.Module:
    """Stop training ``module``: no gradients, eval mode, and kept in eval mode.

    The module gets its own ``train`` (an instance attribute over its class's), which
    ``train()`` on any parent calls and which keeps it in eval; :func:`unfreeze` removes it.

    Returns:
        ``module`` (changed in place).
    """
    module.requires_grad_(False)
    object.__setattr__(module, _FROZEN_ATTR, True)
    object.__setattr__(module, "train", _StayEval(module))
    nn.Module.train(module, False)
    return module


def unfreeze(module: nn.Module) -> nn.Module:
    """Undo :func:`freeze`: trainable again; the mode is left to the next ``train()``."""
    module.requires_grad_(True)
    object.__setattr__(module, _FROZEN_ATTR, False)
    module.__dict__.pop("train", None)
    return module


def is_frozen(module: nn.Module) -> bool:
    """Whether :func:`freeze` was called on ``module`` (and not undone)."""
    return bool(getattr(module, _FROZEN_ATTR, False))


@contextlib.contextmanager
def frozen_forward(module: nn.Module) -> Iterator[None]:
    """Run the block under ``torch.no_grad()`` when ``module`` is frozen.

    ``no_grad`` rather than ``inference_mode``: the outputs feed trainable parts, and
    inference tensors cannot be saved for backward.
    """
    if is_frozen(module):
        with torch.no_grad():
            yield
    else:
        yield
