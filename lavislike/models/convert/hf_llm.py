"""``transformers`` ``Blip2ForConditionalGeneration`` folders <-> ``blip2_opt`` / ``blip2_t5``.

* :func:`from_hf_llm` builds the stage-2 model from a folder or hub id: image encoder and
  Q-Former sizes from ``config.json`` (the stage-1 helpers), the LLM from its
  ``text_config`` (decoder-only -> ``blip2_opt`` with ``causal_lm``, encoder-decoder ->
  ``blip2_t5`` with ``seq2seq_lm``), the LLM tokenizer from the folder's files. All
  weights, the LLM's included, come from the folder.
* :func:`save_hf_llm` writes a folder ``Blip2ForConditionalGeneration.from_pretrained``
  loads with the same logits and generations. transformers 5 finds the visual prompt's
  positions by ``image_token_index`` placeholders in ``input_ids`` (one per query); the
  tokenizer written there gets an ``<image>`` token for that, placed in a free row of the
  LLM vocabulary (OPT and FlanT5 pad theirs).
"""
from __future__ import annotations

import copy
import os
import re
from typing import Any

import torch
from torch import nn

from lavislike.errors import CheckpointError
from lavislike.models.convert.hf import (
    HF_QFORMER,
    export_hf_state,
    hf_qformer_config,
    hf_vision_config,
    qformer_block,
    read_hf_config,
    vision_block,
    write_hf_weights,
)
from lavislike.models.convert.keymap import KeyMap
from lavislike.models.image_encoders.weights import require_tokenizer

IMAGE_TOKEN = "<image>"
HF_LLM = HF_QFORMER + KeyMap([("language_projection.", "llm_proj."), ("language_model.", "llm.model.")])
# text_config entries that describe a saved file, not the architecture
_TRANSIENT = ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype")


def llm_block(text_config: Any, folder: str) -> dict[str, Any]:
    """Our ``llm`` block for a BLIP-2 ``text_config`` (weights come from the checkpoint)."""
    data = {k: v for k, v in text_config.to_dict().items() if k not in _TRANSIENT}
    block = {
        "name": "seq2seq_lm" if text_config.is_encoder_decoder else "causal_lm",
        "path": None,
        "tokenizer": folder,
        "load_weights": False,
        "hf_config": data,
        # the folder's text_config is what ran; restate the keys our defaults override
        # (FlanT5's exact GELU) with the folder's values
        "config_overrides": {k: data[k] for k in ("dense_act_fn",) if k in data},
    }
    if not text_config.is_encoder_decoder:
        block["end_of_text"] = "\n"
    return block


def from_hf_llm(
    source: str | os.PathLike, device: str | torch.device = "cpu", is_eval: bool = True, **overrides: Any
) -> nn.Module:
    """``blip2_opt`` / ``blip2_t5`` from a ``Blip2ForConditionalGeneration`` folder or hub id.

    Args:
        source: folder or hub id.
        device: where the weights go.
        is_eval: eval mode.
        **overrides: merged into the derived model config (e.g. ``prompt="a photo of"``).
    """
    from lavislike.models.loading import load_model

    folder, hf, archs = read_hf_config(source)
    if getattr(hf, "model_type", None) != "blip-2" or (archs and "Blip2ForConditionalGeneration" not in archs):
        raise CheckpointError(
            f"{folder}: expected a Blip2ForConditionalGeneration folder; this one is "
            f"{archs or getattr(hf, 'model_type', '?')}"
        )
    if getattr(hf.qformer_config, "use_qformer_text_input", False):
        raise CheckpointError(f"{folder}: Q-Former text input (InstructBLIP-style) is not a BLIP-2 stage-2 model")
    require_tokenizer(folder, "from_hf")
    arch = "blip2_t5" if hf.text_config.is_encoder_decoder else "blip2_opt"
    derived = {
        "image_encoder": vision_block(hf.vision_config),
        "ln_vision_eps": hf.vision_config.layer_norm_eps,
        "qformer": qformer_block(hf, text_input=False, lm_head=False),
        "llm": llm_block(hf.text_config, str(folder)),
        "load_pretrained": False,
        "pretrained": None,
        "finetuned": None,
        "hf_hub_id": str(source),
    }
    return load_model(arch, is_eval=is_eval, device=device, checkpoint=str(folder), **{**derived, **overrides})


def _image_token(model: nn.Module) -> tuple[Any, int]:
    """A copy of the LLM tokenizer holding the ``<image>`` placeholder, and its id."""
    tok = copy.deepcopy(model.llm.tokenizer)
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_id = int(tok.convert_tokens_to_ids(IMAGE_TOKEN))
    rows = model.llm.model.get_input_embeddings().weight.shape[0]
    if image_id >= rows:
        raise CheckpointError(
            f"save_hf: the LLM vocabulary has {rows} rows and no free one for the {IMAGE_TOKEN} "
            f"placeholder (its id would be {image_id}); transformers' BLIP-2 needs one"
        )
    return tok, image_id


def save_hf_llm(model: nn.Module, folder: str | os.PathLike) -> None:
    """Write ``model`` as a ``Blip2ForConditionalGeneration`` folder (config, weights, tokenizer).

    Raises:
        CheckpointError: a part has no transformers equivalent (an image encoder other than
            EVA, a question-aware Q-Former) or the vocabulary has no row for ``<image>``.
    """
    from transformers import Blip2Config

    from lavislike.models.convert.lavis_llm import tied_duplicates

    if model.qformer.cfg.text_input:
        raise CheckpointError("save_hf: Blip2ForConditionalGeneration has no Q-Former text input")
    tok, image_id = _image_token(model)
    text_config = model.llm.model.config.to_dict()
    config = Blip2Config(
        vision_config=hf_vision_config(model),
        qformer_config=hf_qformer_config(model, text_input=False),
        text_config=text_config,
        num_query_tokens=model.qformer.cfg.num_query_token,
        image_token_index=image_id,
    )
    # written as it is (transformers 5 sets it true for every T5): a FlanT5 head of its own
    # must load untied in any transformers version
    config.text_config.tie_word_embeddings = model.llm.output_tied
    config.architectures = ["Blip2ForConditionalGeneration"]
    state = export_hf_state(model, HF_LLM)
    dups = tied_duplicates(model.llm.model, "language_model.")
    state = {k: v for k, v in state.items() if not any(re.fullmatch(d, k) for d in dups)}
    folder = write_hf_weights(folder, state)
    config.save_pretrained(folder)
    tok.save_pretrained(folder)
