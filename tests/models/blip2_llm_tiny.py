"""Tiny random ``transformers`` ``Blip2ForConditionalGeneration`` folders (OPT / LLaMA / T5).

The tokenizer is trained in the test (:mod:`llm_tiny`) and gets the ``<image>`` placeholder
transformers 5 expects; the LLM vocabulary is padded past it, as OPT's and FlanT5's are.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llm_tiny import tiny_text_config, train_tokenizer

NUM_QUERY = 4
# the tiny vision tower of every test BLIP-2 / InstructBLIP
VISION_CONFIG = dict(
    hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
    image_size=32, patch_size=8, layer_norm_eps=1e-5, qkv_bias=True,
)


def spread_weights_(model, vectors: bool = False) -> None:
    """Redraw matrices (and the query tokens) wider than the tiny default init (std 0.02),
    which makes every LLM distribution flat; wider weights make generations depend on the
    image and the prompt. ``vectors``: also shift LayerNorm scales / biases by N(0, 0.1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 or name == "query_tokens":
                p.normal_(0, 0.25 if name.startswith("language_model") else 0.1)
            elif vectors:
                p.add_(torch.randn_like(p) * 0.1)


def build_hf_blip2(kind: str, seed: int = 0):
    """``(model, tokenizer)``: a random tiny HF BLIP-2 with a ``kind`` LLM (eval, fp32)."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    tok = train_tokenizer(kind)
    tok.add_tokens(["<image>"], special_tokens=True)
    image_id = tok.convert_tokens_to_ids("<image>")
    text = tiny_text_config(kind, vocab_size=len(tok) + 7, width=24, seed_shift=seed)
    config = Blip2Config(
        vision_config=VISION_CONFIG,
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
    spread_weights_(model)
    return model.eval(), tok


def untie_lm_head_(model) -> None:
    """Give the HF model's LLM an output head of its own, unlike its input embedding (as
    FlanT5 checkpoints hold it; transformers 5 builds every T5 tied)."""
    lm = model.language_model
    gen = torch.Generator().manual_seed(11)
    lm.lm_head.weight = torch.nn.Parameter(torch.randn(lm.lm_head.weight.shape, generator=gen) * 0.25)
    assert lm.lm_head.weight is not lm.get_input_embeddings().weight


def save_hf_blip2(folder: Path, kind: str, seed: int = 0, untied: bool = False):
    """Save :func:`build_hf_blip2`'s model and tokenizer; returns ``(folder, model, tok)``.
    ``untied``: the LLM's LM head is its own tensor (:func:`untie_lm_head_`)."""
    model, tok = build_hf_blip2(kind, seed)
    if untied:
        untie_lm_head_(model)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder), model, tok


def save_llm(hf, tok, kind: str, folder: Path) -> dict:
    """Save the HF model's LLM and tokenizer into ``folder``; returns our ``llm`` block
    loading them from there (as a LAVIS stage-2 ``.pth``, which lacks the LLM, needs)."""
    hf.language_model.save_pretrained(folder)
    tok.save_pretrained(folder)
    llm = {"path": str(folder), "tokenizer": None, "hf_config": None, "load_weights": True}
    if kind == "t5":
        llm["config_overrides"] = {"dense_act_fn": hf.config.text_config.dense_act_fn}
    else:
        llm["end_of_text"] = "\n"
    return llm


def lavis_state(hf_state: dict, proj: str) -> dict:
    """HF BLIP-2 / InstructBLIP keys -> LAVIS keys (hand-written, independent of our tables).

    The vision tower and the LLM are left out, as LAVIS's runner saves frozen parts;
    ``proj`` names the LLM projection (``opt_proj`` / ``t5_proj``).
    """
    out = {}
    for key, value in hf_state.items():
        if key.startswith(("language_model.", "vision_model.")) and not key.startswith("vision_model.post_layernorm."):
            continue
        new = (
            key.replace("qformer.encoder.layer.", "Qformer.bert.encoder.layer.")
            .replace(".attention.attention.", ".attention.self.")
            .replace(".crossattention.attention.", ".crossattention.self.")
            .replace("qformer.layernorm.", "Qformer.bert.embeddings.LayerNorm.")  # BLIP-2
            .replace("qformer.embeddings.layernorm.", "Qformer.bert.embeddings.LayerNorm.")  # InstructBLIP
            .replace("qformer.embeddings.", "Qformer.bert.embeddings.")
            .replace("language_projection.", f"{proj}.")
            .replace("vision_model.post_layernorm.", "ln_vision.")
        )
        out[new] = value.clone()
    return out


def assert_generation_matches(ours, tok, img, prompts, expected, **generation) -> None:
    """Our token ids (``llm.generate_ids``) and captions (``generate``) with
    ``beam_search="transformers"`` equal ``expected``, the new tokens transformers generated
    with the same LAVIS-style ``generation`` args."""
    gen = ours.llm.generation_kwargs(**generation)
    got = ours.llm.generate_ids(ours.soft_prompt(img), prompts, beam_search="transformers", **gen)
    assert got.tolist() == expected.tolist()
    generation["beam_search"] = "transformers"
    captions = ours.generate({"image": img, "prompt": prompts}, **generation)
    assert captions == [t.strip() for t in tok.batch_decode(expected, skip_special_tokens=True)]
    out = ours.generate({"image": img, "prompt": prompts}, return_ids=True, **generation)
    assert out.ids.tolist() == expected.tolist() and out.texts == captions


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


def newline_id(tok) -> int:
    return tok("\n", add_special_tokens=False).input_ids[-1]


def hf_new_tokens(hf, tok, img, prompts, **kw) -> torch.Tensor:
    """The new tokens transformers' BLIP-2 generates after ``prompts`` (left-padded)."""
    ids, mask = hf_inputs(tok, prompts, "left", hf.config.image_token_index)
    with torch.no_grad():
        out = hf.generate(pixel_values=img, input_ids=ids, attention_mask=mask, pad_token_id=tok.pad_token_id, **kw)
    return out[:, ids.shape[1]:]


def hf_t5_loss(hf, tok, img, inputs, outputs):
    """transformers' prefix-LM loss: ``inputs`` after the queries into the encoder,
    ``outputs`` as labels."""
    ids, mask = hf_inputs(tok, inputs, "right", hf.config.image_token_index)
    out = tok(outputs, padding=True, return_tensors="pt")
    labels = out.input_ids.masked_fill(out.attention_mask == 0, -100)
    with torch.no_grad():
        return hf(pixel_values=img, input_ids=ids, attention_mask=mask, labels=labels,
                  decoder_attention_mask=out.attention_mask).loss


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
