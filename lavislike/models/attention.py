"""Scaled dot-product attention, with a faster path for reduced-precision CPU training and
CPU attention with dropout.

PyTorch picks its flash-attention kernel on CPU whenever it can. In bf16/fp16 that kernel's
backward is several times slower than plain matrix products at the Q-Former's lengths
(45 x 45 self-attention, 8 pairs, 6 heads, forward + backward on one Xeon core with AMX:
flash 8.8 ms, its "math" kernel 3.2 ms, the path below 2.0 ms), while its forward and its
fp32 backward are as fast or faster, and over image patches (32 queries x 197 keys) its
backward wins again. So training under bf16/fp16 autocast on CPU over at most
:data:`SCORES_MAX_KEYS` keys takes the path below, and so does any CPU attention with
dropout (PyTorch runs its math kernel then, in fp32 too, which the path computes faster);
everything else (fp32 without dropout, inference, GPUs, longer key sequences in bf16
without dropout) keeps PyTorch's choice. A frozen LLM's attention (transformers' SDPA
integration) gets PyTorch's math kernel in the same case (:func:`llm_attention_kernel`;
45 x 45 causal, 8 heads: 3.7 against flash's 11.7 ms).

The path computes what PyTorch's math kernel computes for bf16/fp16 inputs on the CPU:
everything between the inputs and the output in fp32 (scores ``q k^T / sqrt(d)``, mask,
softmax, dropout on the probabilities, the product with ``v``), without its copies. Its
gradients are closer to fp32 attention's than flash's (45 x 45: 0.17% against 0.24-0.28%
relative). With attention dropout (LAVIS's configs: 0.1) PyTorch runs its math kernel on
the CPU anyway, and this path draws the same dropout masks (``at::dropout`` on the fp32
probabilities).
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["SCORES_MAX_KEYS", "llm_attention_kernel", "scaled_dot_product_attention", "use_fp32_path"]

# keys up to which the path below beats flash's backward (8 pairs x 6 heads, one core,
# ms forward + backward, flash / this path): 32 x 64 keys 4.4 / 2.5, 32 x 128 4.9 / 4.4,
# 128 x 128 16.8 / 10.7; beyond, cross-attention over image patches: 32 x 197 6.5 / 7.4
SCORES_MAX_KEYS = 128
_REDUCED = (torch.bfloat16, torch.float16)


def _flash_backward_is_slow(device: torch.device, dtype: torch.dtype, keys: int, requires_grad: bool) -> bool:
    return (
        device.type == "cpu"
        and dtype in _REDUCED
        and keys <= SCORES_MAX_KEYS
        and requires_grad
        and torch.is_grad_enabled()
    )


def use_fp32_path(q: torch.Tensor, k: torch.Tensor, dropout_p: float = 0.0) -> bool:
    """Whether :func:`scaled_dot_product_attention` takes its fp32 path: CPU attention in
    bf16/fp16 that autograd records, over at most :data:`SCORES_MAX_KEYS` keys; or any CPU
    attention with dropout, where PyTorch runs its math kernel, which the path computes
    with fewer copies (fp32 forward + backward, one core: 24 pairs x 6 heads, 45 x 45
    7.2 -> 5.8 ms, 32 queries x 197 patches 25.5 -> 21.8 ms; bf16 alike)."""
    if dropout_p > 0.0 and q.device.type == "cpu":
        return True
    return _flash_backward_is_slow(q.device, q.dtype, k.shape[-2], q.requires_grad or k.requires_grad)


def llm_attention_kernel(
    inputs_embeds: torch.Tensor, llm_dtype: torch.dtype, keys: Optional[int] = None
) -> AbstractContextManager:
    """Context for a frozen LLM's forward whose ``inputs_embeds`` carry gradients (the soft
    prompt): PyTorch's math SDPA kernel when that attention runs in bf16/fp16 on CPU over at
    most :data:`SCORES_MAX_KEYS` keys (``keys``: the longest sequence attended to, default
    ``inputs_embeds``'s; ``llm_dtype``, or the CPU autocast dtype), else nothing changes."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else llm_dtype
    keys = inputs_embeds.shape[1] if keys is None else keys
    if _flash_backward_is_slow(inputs_embeds.device, dtype, keys, inputs_embeds.requires_grad):
        return sdpa_kernel(SDPBackend.MATH)
    return nullcontext()


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (boolean or additive ``attn_mask``), on the path
    above for reduced-precision CPU training and CPU attention with dropout."""
    if not use_fp32_path(q, k, dropout_p):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    # autocast would run these products in bf16 again
    with torch.autocast(q.device.type, enabled=False):
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:  # (every Q-Former row sees at least itself or a query)
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask
        probs = scores.softmax(-1)
        if dropout_p > 0.0:
            probs = F.dropout(probs, dropout_p)
        return torch.matmul(probs, v.float()).to(v.dtype)
