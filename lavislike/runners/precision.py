"""The precision frozen parts are stored in while a runner trains or evaluates
(``run.frozen_precision``).

Frozen parts get no gradient and no optimizer state, so storing them in bf16 halves their
memory and, on CPUs with native bf16 matrix instructions (``avx512_bf16`` / AMX), runs
them 2-3x faster; trainable parts keep their own dtype (fp32 master weights). Measured on
one such CPU (bench/README.md): the frozen ViT ran 2.2x faster in bf16 with 0.3% relative
feature error, and a stage-2 step in the recommended configuration below 33% faster.

Values:

* ``model`` (default): as the model config says (``image_encoder.precision``,
  ``llm.dtype``), so fp32 runs stay bit-identical to transformers;
* ``auto``: bf16 on a CPU with native bf16 (see :func:`cpu_has_native_bf16`), otherwise
  as ``model`` (on GPUs the model configs already choose fp16 / bf16);
* ``fp32`` / ``bf16`` / ``fp16``: every frozen part in that dtype (fp16 only on GPUs).

The recommended CPU training configuration is ``run.frozen_precision=auto run.amp=true``
(bf16 autocast over the trainable parts).
"""
from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from lavislike.errors import ConfigError
from lavislike.common.suggest import check_choice
from lavislike.models.freezing import cast_precision, is_frozen, parse_precision
from lavislike.runners.amp import resolve_amp_dtype, store_frozen_in

logger = logging.getLogger("lavislike")

FROZEN_PRECISIONS = ("model", "auto", "fp32", "bf16", "fp16")
# x86: AVX512-BF16 dot products or AMX tiles; aarch64: the BF16 extension
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (not the emulation torch falls back to,
    which is slower than fp32). Reads ``/proc/cpuinfo`` (Linux); False where it cannot tell."""
    info = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not info.is_file():
        return False
    for line in info.read_text(errors="ignore").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return bool(_NATIVE_BF16_FLAGS & set(value.split()))
    return False


def resolve_frozen_precision(choice: str, device: torch.device) -> Optional[torch.dtype]:
    """The dtype frozen parts are cast to on ``device``; None leaves them as built.

    Raises:
        ConfigError: an unknown value, or fp16 on the CPU.
    """
    name = str(choice).strip().lower()
    check_choice(name, FROZEN_PRECISIONS, "run.frozen_precision", shown=choice)
    if name == "model":
        return None
    if name == "auto":
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
    dtype = parse_precision(name)
    if dtype == torch.float16 and device.type == "cpu":
        raise ConfigError("run.frozen_precision: fp16 is slow or unsupported on the CPU; use bf16 or fp32")
    return dtype


def frozen_roots(model: nn.Module) -> dict[str, nn.Module]:
    """The outermost frozen modules of ``model`` (``name -> module``)."""
    roots: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if is_frozen(module) and not any(name.startswith(r + ".") or r == "" for r in roots):
            roots[name] = module
    return roots


def cast_frozen_parts(model: nn.Module, dtype: Optional[torch.dtype]) -> list[str]:
    """Cast every frozen part of ``model`` to ``dtype`` (None: nothing); returns their names."""
    if dtype is None:
        return []
    roots = frozen_roots(model)
    for module in roots.values():
        cast_precision(module, dtype, force=True)
    if roots:
        logger.info("frozen parts stored in %s: %s", str(dtype).replace("torch.", ""), ", ".join(roots))
    return list(roots)


def store_frozen_parts(model: nn.Module, run: Any, device: torch.device) -> Optional[torch.dtype]:
    """Store ``model``'s frozen parts as a run with the ``run`` keys does; returns its
    autocast dtype (None without ``run.amp``).

    ``run.frozen_precision`` first, then (``run.amp``) the autocast dtype, which with
    ``run.amp_dtype`` null follows the frozen parts, and the frozen half-precision parts
    stored in it (:mod:`lavislike.runners.amp`). The runner and ``lavislike cache-features``
    both call it: the feature cache's fingerprint holds the image encoder's dtype.
    """
    cast_frozen_parts(model, resolve_frozen_precision(run.get("frozen_precision", "model"), device))
    amp = resolve_amp_dtype(bool(run.get("amp", False)), run.get("amp_dtype"), model, device)
    if amp is not None:
        store_frozen_in(model, amp, device)
    return amp
