"""The autocast dtype and the frozen parts' storage dtype agree.

Autocast re-casts a weight to its dtype at every op and caches the cast only for weights
that require grad: a frozen fp16 OPT under bf16 autocast would be re-cast in every layer at
every training and decoding step, and compute in bf16 instead of the fp16 LAVIS used. So:

- ``run.amp_dtype: null``: AMP follows the frozen parts. Frozen half-precision weights all in
  one dtype give that dtype (fp16 OPT / ViT-g -> fp16 AMP with a grad scaler, as LAVIS; a bf16
  FlanT5 -> bf16). Without frozen half-precision weights, or with both kinds, the device's
  default: bf16 where supported, else fp16.
- Frozen half-precision weights in the other half dtype are then stored in the AMP dtype
  (``run.amp_dtype: bf16`` with the fp16 ViT-g of the FlanT5 configs: the ViT becomes bf16).

On the CPU fp16 is not an AMP dtype: fp16 frozen parts there fall back to fp32 at their first
forward (``models.freezing.cpu_fp16_fallback``) and are left alone here.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from lavislike.errors import ConfigError

logger = logging.getLogger("lavislike")

HALF = (torch.float16, torch.bfloat16)
AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def _frozen_half(module: nn.Module, device: torch.device) -> set[torch.dtype]:
    """Dtypes of ``module``'s frozen half-precision parameters that AMP can run on ``device``."""
    found = {p.dtype for p in module.parameters() if not p.requires_grad and p.dtype in HALF}
    if device.type != "cuda":
        found.discard(torch.float16)
    return found


def default_amp_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def choose_amp_dtype(requested: Optional[torch.dtype], model: nn.Module, device: torch.device) -> torch.dtype:
    """``requested`` (``run.amp_dtype``), else the one dtype the frozen half-precision parts
    are stored in, else the device default."""
    if requested is not None:
        return requested
    frozen = _frozen_half(model, device)
    return frozen.pop() if len(frozen) == 1 else default_amp_dtype(device)


def resolve_amp_dtype(amp: bool, name: Optional[str], model: nn.Module,
                      device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``run.amp`` / ``run.amp_dtype`` (None: no AMP); see :func:`choose_amp_dtype`.

    Raises:
        ConfigError: an unknown ``run.amp_dtype``, or fp16 off the GPU.
    """
    if not amp:
        return None
    if name is not None and name not in AMP_DTYPES:
        raise ConfigError(f"run.amp_dtype: unknown '{name}'; valid: bf16, fp16")
    if name is not None and AMP_DTYPES[name] == torch.float16 and device.type != "cuda":
        raise ConfigError("run.amp_dtype: fp16 autocast needs a GPU; use bf16 on CPU")
    return choose_amp_dtype(AMP_DTYPES.get(name), model, device)


def store_frozen_in(model: nn.Module, dtype: torch.dtype, device: torch.device) -> int:
    """Cast frozen half-precision parameters (and their modules' floating buffers) stored in
    another half dtype to ``dtype``; returns how many parameters were cast."""
    other = _frozen_half(model, device) - {dtype}
    if dtype not in HALF or not other:
        return 0
    n = 0
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if not params or any(p.requires_grad or p.dtype not in other for p in params):
            continue
        for p in params:
            p.data = p.data.to(dtype)
        for name, buf in module.named_buffers(recurse=False):
            if buf.is_floating_point() and buf.dtype in other:
                setattr(module, name, buf.to(dtype))
        n += len(params)
    if n:
        logger.info("amp: %d frozen parameters stored in %s (were %s) to match autocast",
                    n, dtype, ", ".join(sorted(str(d) for d in other)))
    return n
