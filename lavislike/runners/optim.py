"""AdamW with weight-decay / no-decay groups and layer-wise lr decay that is really applied.

Layer ids come from the model when it offers ``get_layer_id(name) -> (layer_id, num_layers)
| None`` (layer 0 = embeddings, 1..num_layers = blocks, num_layers + 1 = anything after the
blocks); otherwise they are parsed from ``<prefix>blocks.<N>.`` parameter names, which is
how timm / EVA ViTs name their blocks. Parameters outside a layered encoder keep lr scale 1.
A group's ``lr_scale`` is ``decay ** (num_layers + 1 - layer_id)`` and the lr schedule
multiplies it in at every step.

The update runs as torch's fused AdamW kernel when every trainable parameter lives on a
device that has one (CPU and CUDA in torch >= 2.4): one kernel over all tensors instead
of about ten elementwise ops per tensor; otherwise the multi-tensor (``foreach``) path,
and the per-tensor loop only where neither exists. All three compute the same update
(tests/runners/test_optim.py checks it against a hand-written AdamW).
"""
from __future__ import annotations

import logging
import re
from collections import defaultdict

import torch
from torch import nn

logger = logging.getLogger("lavislike")

_BLOCK = re.compile(r"^(?P<prefix>(?:.*\.)?)blocks\.(?P<idx>\d+)\.")
_EMBED_PARTS = ("patch_embed", "cls_token", "pos_embed", "pos_drop", "rel_pos_bias")


def no_weight_decay(name: str, param: torch.Tensor, skip: set[str]) -> bool:
    """Biases, norms and other 1-d parameters (plus names the model lists) get no decay."""
    return param.ndim < 2 or name.endswith(".bias") or "norm" in name.lower() or name in skip


def _parsed_layer_ids(names: list[str]) -> dict[str, tuple[int, int]]:
    """``name -> (layer_id, num_layers)`` for parameters of ViT-style ``blocks.N`` encoders."""
    depth: dict[str, int] = defaultdict(int)
    for name in names:
        m = _BLOCK.match(name)
        if m:
            depth[m["prefix"]] = max(depth[m["prefix"]], int(m["idx"]) + 1)
    ids = {}
    for name in names:
        m = _BLOCK.match(name)
        if m:
            ids[name] = (int(m["idx"]) + 1, depth[m["prefix"]])
            continue
        for prefix, n in depth.items():
            if name.startswith(prefix):
                rest = name[len(prefix):]
                ids[name] = (0 if rest.split(".")[0] in _EMBED_PARTS else n + 1, n)
                break
    return ids


def build_param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Parameter groups keyed by (decay or not, lr scale), for trainable parameters only.

    Args:
        model: the unwrapped model.
        weight_decay: decay for weight matrices; biases / norms / 1-d params get 0.
        layer_decay: per-layer lr multiplier for layered encoders (1.0 = off).

    Returns:
        Groups with ``params``, ``weight_decay``, ``lr_scale`` and ``names`` (for logs).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    hook = getattr(model, "get_layer_id", None)
    parsed = {} if (hook is not None or layer_decay == 1.0) else _parsed_layer_ids([n for n, _ in named])
    groups: dict[tuple[bool, float], dict] = {}
    for name, param in named:
        decay = not no_weight_decay(name, param, skip)
        scale = 1.0
        if layer_decay != 1.0:
            layer = hook(name) if hook is not None else parsed.get(name)
            if layer is not None:
                layer_id, num_layers = layer
                scale = layer_decay ** (num_layers + 1 - layer_id)
        key = (decay, scale)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "weight_decay": weight_decay if decay else 0.0,
                           "lr_scale": scale}
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    # deterministic order so optimizer state maps to the same params after resume
    return [groups[k] for k in sorted(groups, key=lambda k: (not k[0], -k[1]))]


def build_optimizer(model: nn.Module, init_lr: float, weight_decay: float, betas: tuple[float, float],
                    layer_decay: float = 1.0, eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over :func:`build_param_groups`; group names are kept out of the state dict."""
    groups = build_param_groups(model, weight_decay, layer_decay)
    n_params = sum(p.numel() for g in groups for p in g["params"])
    logger.info("optimizer: AdamW over %d trainable parameters in %d groups, betas=%s",
                n_params, len(groups), tuple(betas))
    for g in groups:
        g.pop("names")
        g["lr"] = init_lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=init_lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                             **adamw_implementation([p for g in groups for p in g["params"]]))


def adamw_implementation(params: list[torch.Tensor]) -> dict[str, bool]:
    """``{"fused": True}`` when torch has a fused AdamW kernel for every parameter's device
    and dtype, else ``{"foreach": True}`` when the multi-tensor path applies, else ``{}``."""
    try:
        from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices as foreach_devices
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices as fused_devices
    except ImportError:  # older torch: its own default
        return {}
    if not params:
        return {}
    # FSDP2 leaves small trainable tensors replicated next to its sharded DTensors, and the
    # fused / foreach kernels refuse such a mix: the per-tensor loop handles it
    if len({type(p) for p in params}) > 1:
        return {"foreach": False}
    devices = {p.device.type for p in params}
    floating = all(p.is_floating_point() for p in params)
    if floating and devices <= set(fused_devices()):
        return {"fused": True}
    if devices <= set(foreach_devices()):
        return {"foreach": True}
    return {}
