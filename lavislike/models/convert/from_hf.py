"""``from_hf``: a lavislike model from any Hugging Face BLIP-2 folder or hub id.

It sits above both builders (:mod:`~lavislike.models.convert.hf` for stage 1,
:mod:`~lavislike.models.convert.hf_llm` for stage 2) so that neither imports the other's
entry point.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from lavislike.models.convert.hf import from_hf_retrieval, read_hf_config
from lavislike.models.convert.hf_llm import from_hf_llm

__all__ = ["from_hf"]


def from_hf(source: str | os.PathLike, device: str | torch.device = "cpu", is_eval: bool = True,
            **overrides: Any) -> nn.Module:
    """A model from a Hugging Face BLIP-2 folder or hub id.

    ``Blip2ForImageTextRetrieval`` gives ``blip2_image_text_matching``;
    ``Blip2ForConditionalGeneration`` gives ``blip2_opt`` / ``blip2_t5`` (by its LLM).

    Args:
        source: folder or hub id.
        device: where the weights go.
        is_eval: eval mode.
        **overrides: merged into the derived model config.
    """
    folder, _, archs = read_hf_config(source)
    if "Blip2ForConditionalGeneration" in archs:
        return from_hf_llm(folder, device=device, is_eval=is_eval, **overrides)
    return from_hf_retrieval(folder, device=device, is_eval=is_eval, **overrides)
