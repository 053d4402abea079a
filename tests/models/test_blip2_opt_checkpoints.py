"""Stage-2 LAVIS ``.pth`` loading (both LLM families) and real-size trainable-parameter counts.

The LAVIS file is written in the test from a tiny HF BLIP-2 by renaming its keys to
LAVIS's (``Qformer.bert.*``, ``opt_proj`` / ``t5_proj``, ``ln_vision``), without the LLM, as
LAVIS's runner saves it; the frozen LLM comes from ``llm.path``. The loaded model must give
the HF model's loss.
"""
from __future__ import annotations

import pytest
import torch

from blip2_llm_tiny import NUM_QUERY, hf_inputs, images, lavis_state, save_hf_blip2, save_llm
from lavislike.errors import CheckpointError
from lavislike.models import load_model
from lavislike.models.convert.hf import qformer_block, vision_block
from lavislike.models.convert.hf_llm import from_hf_llm

TEXTS = ["a dog on a couch", "two cats laying on a red blanket"]


def stage2_lavis_state(hf_state: dict, proj: str, encoder_state: dict) -> dict:
    """A LAVIS stage-2 ``.pth`` state: the HF weights under LAVIS names, the encoder's, and
    stage-1 leftovers."""
    out = lavis_state(hf_state, proj)
    out.update(encoder_state)
    # stage-1 leftovers a stage-2 model has no place for (a stage-1 checkpoint holds them)
    out["vision_proj.weight"] = torch.zeros(7, 32)
    out["itm_head.weight"] = torch.zeros(2, 32)
    out["temp"] = torch.tensor(0.07)
    out["Qformer.bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(40, 32)
    out["Qformer.bert.embeddings.word_embeddings.weight"] = torch.zeros(64, 32)
    return out


@pytest.mark.parametrize("kind", ["opt", "t5"])
def test_lavis_pth_with_llm_from_path(kind, tmp_path):
    folder, hf, tok = save_hf_blip2(tmp_path / "hf", kind, seed=2)
    llm = save_llm(hf, tok, kind, tmp_path / "llm")
    encoder_state = from_hf_llm(folder).image_encoder.to_lavis_state_dict(prefix="visual_encoder.")
    pth = tmp_path / "blip2_stage2.pth"
    proj = "t5_proj" if kind == "t5" else "opt_proj"
    torch.save({"model": stage2_lavis_state(hf.state_dict(), proj, encoder_state)}, pth)

    arch = "blip2_t5" if kind == "t5" else "blip2_opt"
    model = load_model(
        arch, "tiny", checkpoint=str(pth), image_encoder=vision_block(hf.config.vision_config),
        qformer=qformer_block(hf.config, text_input=False, lm_head=False), llm=llm,
    )
    assert all(not p.is_meta for p in model.parameters())
    torch.testing.assert_close(model.llm_proj.weight, hf.language_projection.weight)
    img = images(seed=7)
    if kind == "t5":
        inputs, outputs = ["a dog on", "two cats"], ["a couch", "laying on a red blanket"]
        loss = model({"image": img, "text_input": inputs, "text_output": outputs})["loss"]
        ids, mask = hf_inputs(tok, inputs, "right", hf.config.image_token_index)
        out = tok(outputs, padding=True, return_tensors="pt")
        labels = out.input_ids.masked_fill(out.attention_mask == 0, -100)
        extra = {"decoder_attention_mask": out.attention_mask}
    else:
        loss = model({"image": img, "text_input": TEXTS})["loss"]
        ids, mask = hf_inputs(tok, TEXTS, "right", hf.config.image_token_index, suffix="\n")
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :NUM_QUERY] = -100
        extra = {}
    with torch.no_grad():
        ref = hf(pixel_values=img, input_ids=ids, attention_mask=mask, labels=labels, **extra).loss
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)


def test_unknown_lavis_keys_are_reported(tmp_path):
    pth = tmp_path / "bad.pth"
    torch.save({"model": {"opt_proj.weight": torch.zeros(24, 32), "mystery_head.weight": torch.zeros(2)}}, pth)
    with pytest.raises(CheckpointError, match="mystery_head"):
        load_model("blip2_opt", "tiny", checkpoint=str(pth))


# -- real-size configs on the meta device -----------------------------------------------------
# config.json facts of the frozen LLMs (no download): hidden sizes, depths, vocabularies
OPT_2_7B = dict(model_type="opt", hidden_size=2560, word_embed_proj_dim=2560, ffn_dim=10240,
                num_hidden_layers=32, num_attention_heads=32, vocab_size=50272, max_position_embeddings=2048)
OPT_6_7B = dict(OPT_2_7B, hidden_size=4096, word_embed_proj_dim=4096, ffn_dim=16384)
FLANT5_XL = dict(model_type="t5", d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24,
                 vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
FLANT5_XXL = dict(FLANT5_XL, d_model=4096, d_ff=10240, num_heads=64)


@pytest.mark.parametrize(
    "arch, model_type, llm, paper_m, llm_b",
    [
        ("blip2_opt", "pretrain_opt2.7b", OPT_2_7B, 107, 2.65),
        ("blip2_opt", "pretrain_opt6.7b", OPT_6_7B, 108, 6.66),
        # FlanT5's LM head is its own matrix (tie_word_embeddings: false): 2.85B / 11.14B,
        # the published sizes; tied it would be 2.78B / 11.0B
        ("blip2_t5", "pretrain_flant5xl", FLANT5_XL, 107, 2.85),
        ("blip2_t5", "pretrain_flant5xl_vitL", FLANT5_XL, 103, 2.85),
        ("blip2_t5", "pretrain_flant5xxl", FLANT5_XXL, 108, 11.14),
    ],
)
def test_trainable_parameters_match_the_paper(arch, model_type, llm, paper_m, llm_b):
    from lavislike.config import model_config
    from lavislike.registry import MODELS

    cfg = model_config(arch, model_type, {"llm": {"hf_config": llm, "load_weights": False},
                                          "image_encoder": {"pretrained": ""}})
    with torch.device("meta"):
        model = MODELS.get(arch).from_config(cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert round(trainable / 1e6) == paper_m
    assert sum(p.numel() for p in model.llm.parameters()) / 1e9 == pytest.approx(llm_b, abs=0.01)
    assert all(not p.requires_grad for p in model.llm.parameters())
    assert all(not p.requires_grad for p in model.image_encoder.parameters())
