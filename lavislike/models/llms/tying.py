"""Whether an LLM's output head shares its input embedding: the checkpoint decides.

FlanT5 (T5 v1.1) checkpoints keep ``lm_head`` apart from ``shared``; OPT and LLaMA-style
models store the head once, as the input embedding. transformers 5 forces
``T5Config.tie_word_embeddings=True`` and keeps the two apart only inside ``from_pretrained``
(when both are stored with different values); any later ``model.tie_weights()`` re-ties them,
so a FlanT5 would score through its input embedding instead of its trained head. Here the
choice is taken from the weights (or, for a random model, from the config as written) and
recorded on the model so that every later ``tie_weights()`` keeps it.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import nn


def embedding_names(model: nn.Module) -> Optional[tuple[str, str]]:
    """``(input embedding weight, output head weight)`` parameter names inside ``model``;
    None when the model has no output head."""
    out_mod = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    in_mod = model.get_input_embeddings()
    if out_mod is None or getattr(out_mod, "weight", None) is None:
        return None
    names = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if module is in_mod and "in" not in names:
            names["in"] = f"{name}.weight" if name else "weight"
        if module is out_mod and "out" not in names:
            names["out"] = f"{name}.weight" if name else "weight"
    return names["in"], names["out"]


def is_tied(model: nn.Module) -> bool:
    """True when the output head is the input embedding (one tensor)."""
    out_mod = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return out_mod is not None and out_mod.weight is model.get_input_embeddings().weight


def set_tied_(model: nn.Module, tied: bool) -> None:
    """Tie or untie the output head from the input embedding, for good.

    Untying gives the head its own copy of the current values (a checkpoint then fills it)
    and removes the head from the tying rules of every ``transformers`` model inside
    ``model``, so ``tie_weights()`` (which recomputes the rules from the config) leaves it
    alone; tying restores the class's rules and ties.
    """
    names = embedding_names(model)
    if names is None:
        return
    head = names[1]
    for prefix, sub in model.named_modules(remove_duplicate=False):
        rules = getattr(type(sub), "_tied_weights_keys", None)
        if not isinstance(rules, dict):
            continue
        local = head[len(prefix) + 1:] if prefix else head
        if prefix and not head.startswith(prefix + "."):
            continue
        if tied:
            sub.__dict__.pop("_tied_weights_keys", None)
        else:
            sub._tied_weights_keys = {k: v for k, v in rules.items() if k != local}
            current = getattr(sub, "all_tied_weights_keys", None)
            if isinstance(current, dict):
                current.pop(local, None)
    out_mod = model.get_output_embeddings()
    if tied:
        model.tie_weights()
    elif is_tied(model):
        weight = out_mod.weight
        out_mod.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)


def declared_tied(raw_config: Mapping[str, Any]) -> bool:
    """The tying a config *as written* asks for (``tie_word_embeddings``, default true);
    transformers 5 overwrites this value for T5, so it is read before the config is built."""
    return raw_config.get("tie_word_embeddings", True) is not False


def tying_in_state(state: Mapping[str, torch.Tensor], names: tuple[str, str], prefix: str = "") -> Optional[bool]:
    """Whether a checkpoint holds the head tied: false when it stores both tensors with
    different values, true when it stores the input embedding only (or both equal, as
    ``.bin`` files of tied models do); None when it holds no input embedding (the LLM
    comes from elsewhere)."""
    inp, out = prefix + names[0], prefix + names[1]
    if inp not in state:
        return None
    if out not in state:
        return True
    a, b = state[inp], state[out]
    return a.shape == b.shape and torch.equal(a, b.to(a.dtype))
