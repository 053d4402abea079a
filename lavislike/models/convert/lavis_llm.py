"""LAVIS ``.pth`` checkpoints of the stage-2 models (``blip2_opt``, ``blip2_t5``).

The stage-1 table (:data:`~lavislike.models.convert.lavis.LAVIS_STAGE1`) plus the LLM
rows: LAVIS's ``opt_proj`` / ``t5_proj`` is our ``llm_proj``, and ``opt_model`` /
``t5_model`` (present only in checkpoints saved with the LLM) is the adapter's
``transformers`` model, whose parameter names LAVIS kept.

LAVIS's runner saves only trainable parameters, so a stage-2 ``.pth`` holds no LLM and,
when the image encoder was frozen, no image encoder either: the LLM then comes from
``llm.path`` and the encoder from ``image_encoder.pretrained``. A stage-1 checkpoint
(stage-2 training starts from one) has no projection and carries the stage-1 heads the
stage-2 model does not have; :func:`drop_unused` discards those. The same holds for a
stage-1 checkpoint in our format (:func:`is_stage1_state`).
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

import torch

from lavislike.models.convert.keymap import KeyMap
from lavislike.models.convert.lavis import LAVIS_STAGE1

# our keys a stage-2 model may not have (query-only Q-Former, no stage-1 heads): a
# converted checkpoint's entries for them are dropped, not reported
STAGE2_UNUSED: tuple[str, ...] = (
    r"qformer\.layers\.\d+\.text_ffn\..*",
    r"qformer\.embeddings\.(word|position)_embeddings\..*",
    r"qformer\.lm_head\..*",
    r"vision_proj\..*",
    r"text_proj\..*",
    r"itm_head\..*",
    r"temp",
)
# what only a stage-2 model has: a stage-1 checkpoint (any format) initialising one lacks them
STAGE2_ONLY: tuple[str, ...] = (r"llm\..*", r"llm_proj\..*")
# model keys a LAVIS stage-2 (or stage-1) checkpoint may lack
LAVIS_LLM_ALLOW_MISSING: tuple[str, ...] = STAGE2_ONLY + (r"image_encoder\..*",)


def lavis_llm_table(encoder_decoder: bool) -> KeyMap:
    """LAVIS -> lavislike rows for a stage-2 model; the family's names come first, so the
    inverse table exports ``t5_proj`` / ``t5_model`` for FlanT5 and ``opt_*`` otherwise."""
    family = ("t5", "opt") if encoder_decoder else ("opt", "t5")
    rows = []
    for name in family:
        rows += [(f"{name}_proj.", "llm_proj."), (f"{name}_model.", "llm.model.")]
    return LAVIS_STAGE1 + KeyMap(rows)


def drop_unused(state: Mapping[str, torch.Tensor], model_keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """``state`` without the :data:`STAGE2_UNUSED` entries the model has no place for."""
    keys = set(model_keys)
    pattern = re.compile("|".join(f"(?:{p})" for p in STAGE2_UNUSED))
    return {k: v for k, v in state.items() if k in keys or not pattern.fullmatch(k)}


def is_stage1_state(state: Mapping[str, torch.Tensor]) -> bool:
    """True when ``state`` holds none of the :data:`STAGE2_ONLY` keys: a stage-1 checkpoint
    (LAVIS starts stage 2 from one with ``strict=False``)."""
    pattern = re.compile("|".join(f"(?:{p})" for p in STAGE2_ONLY))
    return not any(pattern.fullmatch(k) for k in state)


def tied_duplicates(module: torch.nn.Module, prefix: str) -> tuple[str, ...]:
    """Regexes of ``prefix``-ed parameter names that share a tensor with an earlier name
    (tied embeddings): a checkpoint stores one of them."""
    first = {n for n, _ in module.named_parameters()}
    return tuple(
        re.escape(prefix + n) for n, _ in module.named_parameters(remove_duplicate=False) if n not in first
    )
