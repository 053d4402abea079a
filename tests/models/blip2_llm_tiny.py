"""Tiny random ``transformers`` ``Blip2ForConditionalGeneration`` folders (OPT / LLaMA / T5).

The tokenizer is trained in the test (:mod:`llm_tiny`) and gets the ``<image>`` placeholder
transformers 5 expects; the LLM vocabulary is padded past it, as OPT's and FlanT5's are.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llm_tiny import tiny_text_config, train_tokenizer

NUM_QUERY = 4


def build_hf_blip2(kind: str, seed: int = 0):
    """``(model, tokenizer)``: a random tiny HF BLIP-2 with a ``kind`` LLM (eval, fp32)."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    tok = train_tokenizer(kind)
    tok.add_tokens(["<image>"], special_tokens=True)
    image_id = tok.convert_tokens_to_ids("<image>")
    text = tiny_text_config(kind, vocab_size=len(tok) + 7, width=24, seed_shift=seed)
    config = Blip2Config(
        vision_config=dict(
            hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8, layer_norm_eps=1e-5, qkv_bias=True,
        ),
        qformer_config=dict(
            hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=40,
            vocab_size=64, cross_attention_frequency=2, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        text_config=text.to_dict(),
        num_query_tokens=NUM_QUERY,
        image_token_index=image_id,
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():
        # default init (std 0.02) makes every LLM distribution flat; wider weights make
        # generations depend on the image and the prompt
        for name, p in model.named_parameters():
            if p.dim() > 1 or name == "query_tokens":
                p.normal_(0, 0.25 if name.startswith("language_model") else 0.1)
    return model.eval(), tok


def save_hf_blip2(folder: Path, kind: str, seed: int = 0):
    """Save :func:`build_hf_blip2`'s model and tokenizer; returns ``(folder, model, tok)``."""
    model, tok = build_hf_blip2(kind, seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder), model, tok


def hf_inputs(tok, texts, side: str, image_id: int, suffix: str = ""):
    """``input_ids`` / ``attention_mask`` with ``NUM_QUERY`` placeholders in front of each text,
    padded on ``side`` (padding outside the placeholders, as the HF processor does)."""
    rows = [[image_id] * NUM_QUERY + tok(t + suffix).input_ids for t in texts]
    length = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(rows), length), pad)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(length - len(r), length) if side == "left" else slice(0, len(r))
        ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
    return ids, mask


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
