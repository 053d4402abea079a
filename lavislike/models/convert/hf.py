"""Hugging Face ``transformers`` BLIP-2 folders <-> lavislike models (stage 1).

* :func:`from_hf_retrieval` builds ``blip2_image_text_matching`` from a ``Blip2ForImageTextRetrieval``
  folder or hub id: the architecture from its ``config.json``, the tokenizer from its files.
* :func:`save_hf` writes a folder ``Blip2ForImageTextRetrieval.from_pretrained`` loads with
  the same outputs. The Q-Former LM head and the ITC temperature have no place there and
  are left out; an image encoder with no ``Blip2VisionModel`` equivalent raises.

The key tables are data; the stage-2 module extends them (``language_projection``, the
LLM) with ``+`` and passes its own tables to :func:`convert_hf_state` / :func:`export_hf_state`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from lavislike.errors import CheckpointError
from lavislike.models.convert.keymap import (
    KeyMap,
    convert_model_state,
    export_model_state,
    split_prefix,
)
from lavislike.models.convert.lavis import qformer_rules
from lavislike.models.image_encoders.weights import local_folder, require_tokenizer

logger = logging.getLogger(__name__)

HF_ENCODER_PREFIX = "vision_model."
# Q-Former rows shared by every BLIP-2 class in transformers
HF_QFORMER = KeyMap(
    [
        ("query_tokens", "qformer.query_tokens"),
        ("qformer.layernorm.", "qformer.embeddings.norm."),
        ("vision_model.post_layernorm.", "ln_vision."),
    ]
) + qformer_rules("qformer.", "qformer.", attn_self="attention", embeddings=False)
# Blip2ForImageTextRetrieval: text embeddings at the top level, projections and ITM head
HF_RETRIEVAL = HF_QFORMER + KeyMap(
    [
        ("embeddings.word_embeddings.", "qformer.embeddings.word_embeddings."),
        ("embeddings.position_embeddings.", "qformer.embeddings.position_embeddings."),
        ("vision_projection.", "vision_proj."),
        ("text_projection.", "text_proj."),
        ("itm_head.", "itm_head."),
    ]
)
HF_DROP: tuple[str, ...] = (r"embeddings\.position_ids",)
# what a Blip2ForImageTextRetrieval folder cannot hold
HF_RETRIEVAL_ALLOW_MISSING: tuple[str, ...] = (r"qformer\.lm_head\..*", r"temp")


def convert_hf_state(
    state: Mapping[str, torch.Tensor],
    image_encoder: nn.Module,
    table: KeyMap = HF_RETRIEVAL,
    drop: Sequence[str] = HF_DROP,
    source: str = "Hugging Face checkpoint",
) -> dict[str, torch.Tensor]:
    """transformers keys -> our model's keys (``vision_model.*`` via the encoder's converter).

    Raises:
        CheckpointError: a key no row maps and ``drop`` does not cover.
    """
    post_ln = "vision_model.post_layernorm."
    vision, rest = split_prefix({k: v for k, v in state.items() if not k.startswith(post_ln)},
                                HF_ENCODER_PREFIX)
    rest.update({k: v for k, v in state.items() if k.startswith(post_ln)})
    # the encoder converters take keys with or without the prefix
    return convert_model_state(rest, table, drop, source, vision, image_encoder.convert_hf_state_dict)


def export_hf_state(model: nn.Module, table: KeyMap = HF_RETRIEVAL) -> dict[str, torch.Tensor]:
    """Our weights under transformers names; parts without an HF place are left out."""
    return export_model_state(model, table, model.image_encoder.to_hf_state_dict(prefix=HF_ENCODER_PREFIX))


def read_hf_config(source: str | os.PathLike) -> tuple[Path, Any, list[str]]:
    """``(local folder, its transformers config, the config's architectures)``."""
    from transformers import AutoConfig

    folder = local_folder(source)
    try:
        hf = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: cannot read config.json ({str(exc).splitlines()[0]})") from None
    return folder, hf, list(getattr(hf, "architectures", None) or [])


def write_hf_weights(folder: str | os.PathLike, state: Mapping[str, torch.Tensor]) -> Path:
    """Create ``folder`` and write ``state`` (floats as fp32) to its ``model.safetensors``."""
    from lavislike.common.checkpoint import save_weights

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / "model.safetensors", {k: v.float() if v.is_floating_point() else v
                                                for k, v in state.items()}, metadata={"format": "pt"})
    return folder


# -- configs -----------------------------------------------------------------------------
def vision_block(vision_config: Any) -> dict[str, Any]:
    """Our ``image_encoder`` block for a ``Blip2VisionConfig``."""
    from lavislike.models.image_encoders.eva_vit import EvaViT

    return {
        "name": "eva_vit",
        **EvaViT.arch_from_hf(vision_config),
        "precision": "fp32",
        "freeze": True,
        "pretrained": "",
    }


# keys our ``qformer`` block and ``Blip2QFormerConfig`` name alike
_QFORMER_SAME_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "layer_norm_eps",
)


def qformer_block(hf_config: Any, text_input: bool = True, lm_head: bool = True) -> dict[str, Any]:
    """Our ``qformer`` block for a ``Blip2Config``."""
    q = hf_config.qformer_config
    return {
        "num_query_token": hf_config.num_query_tokens,
        "cross_attention_freq": q.cross_attention_frequency,
        **{k: getattr(q, k) for k in _QFORMER_SAME_KEYS},
        "pad_token_id": q.pad_token_id if q.pad_token_id is not None else 0,
        "encoder_width": None,
        "text_input": text_input,
        "lm_head": lm_head,
        "init_from": None,
    }


def hf_vision_config(model: nn.Module) -> dict[str, Any]:
    """``Blip2VisionConfig`` kwargs for the model's encoder; warns when ``ln_vision`` has
    another eps (transformers has one for both)."""
    vision = model.image_encoder.hf_vision_config()
    if abs(model.ln_vision.eps - vision["layer_norm_eps"]) > 1e-12:
        logger.warning(
            "save_hf: ln_vision eps %g differs from the encoder's %g; transformers uses one eps "
            "for both, so outputs will differ slightly", model.ln_vision.eps, vision["layer_norm_eps"]
        )
    return vision


def hf_qformer_config(model: nn.Module, text_input: bool) -> dict[str, Any]:
    """``Blip2QFormerConfig`` kwargs for our Q-Former."""
    q = model.qformer.cfg
    return {
        **{k: getattr(q, k) for k in _QFORMER_SAME_KEYS},
        "pad_token_id": q.pad_token_id,
        "cross_attention_frequency": q.cross_attention_freq,
        "encoder_hidden_size": q.encoder_width or model.image_encoder.num_features,
        "use_qformer_text_input": text_input,
    }


# -- entry points ---------------------------------------------------------------------------
def from_hf_retrieval(source: str | os.PathLike, device: str | torch.device = "cpu", is_eval: bool = True,
                      **overrides: Any) -> nn.Module:
    """``blip2_image_text_matching`` from a ``Blip2ForImageTextRetrieval`` folder or hub id
    (:func:`lavislike.models.convert.from_hf.from_hf` picks this or the stage-2 builder).

    Args:
        source: folder or hub id.
        device: where the weights go.
        is_eval: eval mode.
        **overrides: merged into the derived model config.
    """
    from lavislike.models.loading import load_model

    folder, hf, archs = read_hf_config(source)
    if getattr(hf, "model_type", None) != "blip-2" or (archs and "Blip2ForImageTextRetrieval" not in archs):
        raise CheckpointError(
            f"{folder}: from_hf builds blip2_image_text_matching from a Blip2ForImageTextRetrieval "
            f"folder; this one is {archs or getattr(hf, 'model_type', '?')}"
        )
    require_tokenizer(folder, "from_hf")
    derived = {
        "image_encoder": vision_block(hf.vision_config),
        "ln_vision_eps": hf.vision_config.layer_norm_eps,
        "embed_dim": hf.image_text_hidden_size,
        "qformer": qformer_block(hf),
        "tokenizer": str(folder),
    }
    return load_model("blip2_image_text_matching", is_eval=is_eval, device=device,
                      checkpoint=str(folder), **{**derived, **overrides})


def save_hf(model: nn.Module, folder: str | os.PathLike) -> None:
    """Write ``model`` as a ``Blip2ForImageTextRetrieval`` folder (config, weights, tokenizer).

    Raises:
        CheckpointError: a part has no transformers equivalent (e.g. a timm ConvNeXt encoder,
            or a Q-Former without text input).
    """
    from transformers import Blip2Config

    if not model.qformer.cfg.text_input:
        raise CheckpointError("save_hf: Blip2ForImageTextRetrieval needs a Q-Former with text input")
    config = Blip2Config(
        vision_config=hf_vision_config(model),
        qformer_config=hf_qformer_config(model, text_input=True),
        num_query_tokens=model.qformer.cfg.num_query_token,
        image_text_hidden_size=int(model.cfg.embed_dim),
    )
    config.architectures = ["Blip2ForImageTextRetrieval"]
    folder = write_hf_weights(folder, export_hf_state(model))
    config.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
