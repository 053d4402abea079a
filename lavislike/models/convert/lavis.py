"""LAVIS ``.pth`` checkpoints <-> lavislike state dicts (stage 1), and BERT init tables.

The tables are plain data (:class:`~lavislike.models.convert.keymap.KeyMap`); the stage-2
module adds its rows (``opt_proj`` / ``t5_proj`` ...) with ``+`` and extends the
allow-lists, then calls :func:`convert_lavis_state` with its own tables.

Allow-lists are explicit: a LAVIS key no table renames and no ``LAVIS_DROP`` pattern
covers is reported by name, and so is a model key the checkpoint lacks unless
``LAVIS_ALLOW_MISSING`` covers it.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from lavislike.models.convert.keymap import (
    KeyMap,
    check_unmatched,
    convert_model_state,
    export_model_state,
    split_prefix,
)


def qformer_rules(
    src: str, dst: str, attn_self: str = "self", cls_src: str | None = None, embeddings: bool = True
) -> KeyMap:
    """BERT-layout Q-Former rows: ``src`` = root of ``embeddings.`` / ``encoder.layer.``.

    Args:
        src: e.g. ``"Qformer.bert."`` (LAVIS), ``"bert."`` or ``""`` (a BERT checkpoint).
        dst: our Q-Former's prefix (``"qformer."`` in a model, ``""`` in the module).
        attn_self: name of the q/k/v holder (``self`` in BERT/LAVIS).
        cls_src: root of BERT's ``cls.predictions.`` LM head, when it is mapped too.
        embeddings: include the BERT ``embeddings.*`` rows (HF keeps them elsewhere).
    """
    rows = [
        (f"{src}embeddings.word_embeddings.", f"{dst}embeddings.word_embeddings."),
        (f"{src}embeddings.position_embeddings.", f"{dst}embeddings.position_embeddings."),
        (f"{src}embeddings.LayerNorm.", f"{dst}embeddings.norm."),
    ] if embeddings else []
    layer, ours = f"{src}encoder.layer.{{n}}.", f"{dst}layers.{{n}}."
    for theirs, mine in (("attention", "self_attn"), ("crossattention", "cross_attn")):
        rows += [(f"{layer}{theirs}.{attn_self}.{p}.", f"{ours}{mine}.{p}.") for p in ("query", "key", "value")]
        rows += [
            (f"{layer}{theirs}.output.dense.", f"{ours}{mine}.out."),
            (f"{layer}{theirs}.output.LayerNorm.", f"{ours}{mine}.norm."),
        ]
    for suffix, mine in (("_query", "query_ffn"), ("", "text_ffn")):
        rows += [
            (f"{layer}intermediate{suffix}.dense.", f"{ours}{mine}.fc1."),
            (f"{layer}output{suffix}.dense.", f"{ours}{mine}.fc2."),
            (f"{layer}output{suffix}.LayerNorm.", f"{ours}{mine}.norm."),
        ]
    if cls_src is not None:
        rows += [
            (f"{cls_src}predictions.transform.dense.", f"{dst}lm_head.transform."),
            (f"{cls_src}predictions.transform.LayerNorm.", f"{dst}lm_head.norm."),
            (f"{cls_src}predictions.decoder.weight", f"{dst}lm_head.decoder.weight"),
            (f"{cls_src}predictions.bias", f"{dst}lm_head.decoder.bias"),
        ]
    return KeyMap(rows)


# -- stage 1 -----------------------------------------------------------------------------
LAVIS_STAGE1 = qformer_rules("Qformer.bert.", "qformer.", cls_src="Qformer.cls.") + KeyMap(
    [
        ("query_tokens", "qformer.query_tokens"),
        ("ln_vision.", "ln_vision."),
        ("vision_proj.", "vision_proj."),
        ("text_proj.", "text_proj."),
        ("itm_head.", "itm_head."),
        ("temp", "temp"),
    ]
)
LAVIS_ENCODER_PREFIX = "visual_encoder."
# LAVIS keys that carry nothing we need: a buffer older transformers saved, the duplicate
# of the LM bias (decoder.bias is predictions.bias), the pooler BLIP-2 never uses
LAVIS_DROP: tuple[str, ...] = (
    r"Qformer\.bert\.embeddings\.position_ids",
    r"Qformer\.cls\.predictions\.decoder\.bias",
    r"Qformer\.bert\.pooler\..*",
)
# model keys a LAVIS checkpoint may lack: the tied LM decoder (it is the word embedding)
LAVIS_ALLOW_MISSING: tuple[str, ...] = (r"qformer\.lm_head\.decoder\.weight",)

BERT_DROP: tuple[str, ...] = (
    r"(bert\.)?embeddings\.position_ids",
    r"(bert\.)?embeddings\.token_type_embeddings\..*",
    r"(bert\.)?pooler\..*",
    r"cls\.predictions\.decoder\.bias",
    r"cls\.seq_relationship\..*",
)


def bert_to_qformer_state(state: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """A BERT checkpoint (``bert.``-prefixed or bare) -> :class:`QFormer` module keys.

    Layers beyond ``num_layers`` are skipped; keys we do not use (token types, pooler,
    NSP head) are dropped.
    """
    root = "bert." if any(k.startswith("bert.") for k in state) else ""
    mapped, unmatched = qformer_rules(root, "", cls_src="cls.").convert(state)
    check_unmatched("BERT checkpoint", unmatched, BERT_DROP + (r".*\.(gamma|beta)",))
    return {
        k: v for k, v in mapped.items()
        if not (k.startswith("layers.") and int(k.split(".")[1]) >= num_layers)
    }


def convert_lavis_state(
    state: Mapping[str, torch.Tensor],
    image_encoder: nn.Module,
    table: KeyMap = LAVIS_STAGE1,
    drop: Sequence[str] = LAVIS_DROP,
    source: str = "LAVIS checkpoint",
) -> dict[str, torch.Tensor]:
    """LAVIS keys -> our model's keys.

    ``visual_encoder.*`` goes through the image encoder's own converter (q/v biases, fused
    qkv and dropped blocks are its business); everything else through ``table``.

    Raises:
        CheckpointError: a key no row maps and ``drop`` does not cover.
    """
    encoder_state, rest = split_prefix(state, LAVIS_ENCODER_PREFIX)
    return convert_model_state(rest, table, drop, source, encoder_state,
                               image_encoder.convert_lavis_state_dict)


def to_lavis_state(model: nn.Module, table: KeyMap = LAVIS_STAGE1) -> dict[str, torch.Tensor]:
    """Our model's weights under LAVIS names (for tools that only read LAVIS files)."""
    return export_model_state(model, table, model.image_encoder.to_lavis_state_dict(prefix=LAVIS_ENCODER_PREFIX))
