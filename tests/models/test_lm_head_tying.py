"""FlanT5 keeps its own LM head; OPT's is its input embedding. Every way in and out.

transformers 5 builds every T5 tied and unties it only inside ``from_pretrained``; a later
``tie_weights()`` would silently score FlanT5 through its input embedding. The tiny T5 here
holds an ``lm_head`` unlike ``shared`` (checked in the saved files), and each path must
give transformers' own logits, losses and generations for the same weights.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import Blip2ForConditionalGeneration, T5ForConditionalGeneration

from blip2_llm_tiny import (
    assert_generation_matches, hf_inputs, hf_t5_loss, images, lavis_state, save_hf_blip2, save_llm,
)
from lavislike.models import load_model
from lavislike.models.convert.hf import qformer_block, vision_block
from lavislike.models.convert.hf_llm import from_hf_llm

INPUTS, OUTPUTS = ["a dog on", "two cats laying on a"], ["a couch", "red blanket"]
PROMPTS = ["a photo of", "Question: how many people are there? Short answer:"]


def _file_tensors(path, *names):
    with safe_open(str(path), framework="pt") as fh:
        keys = set(fh.keys())
        return [fh.get_tensor(n) if n in keys else None for n in names]


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    root = tmp_path_factory.mktemp("untied")
    folder, hf, tok = save_hf_blip2(root / "hf", "t5", seed=4, untied=True)
    head, shared = _file_tensors(folder / "model.safetensors", "language_model.lm_head.weight",
                                 "language_model.shared.weight")
    assert head is not None and shared is not None and not torch.equal(head, shared)
    return root, folder, hf, tok


def _assert_like_hf(ours, hf, tok, seed=0):
    lm = ours.llm.model
    assert not ours.llm.output_tied
    assert torch.equal(lm.lm_head.weight, hf.language_model.lm_head.weight)
    assert torch.equal(lm.shared.weight, hf.language_model.shared.weight)
    img = images(seed=seed)
    loss = ours({"image": img, "text_input": INPUTS, "text_output": OUTPUTS})["loss"]
    assert loss.item() == pytest.approx(hf_t5_loss(hf, tok, img, INPUTS, OUTPUTS).item(), abs=1e-5)
    ids, mask = hf_inputs(tok, PROMPTS, "right", hf.config.image_token_index)
    with torch.no_grad():
        ref = hf.generate(pixel_values=img, input_ids=ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5)
    assert_generation_matches(ours, tok, img, PROMPTS, ref[:, 1:], num_beams=1, max_length=5, min_length=5)


def test_hf_folder_and_save_hf_keep_the_head(t5, tmp_path):
    _, folder, hf, tok = t5
    ours = from_hf_llm(folder)
    _assert_like_hf(ours, hf, tok)
    ours.tie_weights()  # what loading calls again: must not re-tie
    assert not ours.llm.output_tied

    ours.save_hf(tmp_path / "out")
    head, shared = _file_tensors(tmp_path / "out" / "model.safetensors", "language_model.lm_head.weight",
                                 "language_model.shared.weight")
    assert torch.equal(head, hf.language_model.lm_head.weight) and not torch.equal(head, shared)
    text_config = json.loads((tmp_path / "out" / "config.json").read_text())["text_config"]
    assert text_config["tie_word_embeddings"] is False
    back = Blip2ForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    assert torch.equal(back.language_model.lm_head.weight, hf.language_model.lm_head.weight)
    _assert_like_hf(from_hf_llm(tmp_path / "out"), hf, tok, seed=1)


def test_own_format_keeps_the_head(t5, tmp_path):
    _, folder, hf, tok = t5
    from_hf_llm(folder).save_pretrained(tmp_path / "ours")  # the LLM is inside (no llm.path)
    head, shared = _file_tensors(tmp_path / "ours" / "model.safetensors", "llm.model.lm_head.weight",
                                 "llm.model.shared.weight")
    assert head is not None and not torch.equal(head, shared)
    _assert_like_hf(load_model("blip2_t5", checkpoint=tmp_path / "ours", is_eval=True), hf, tok, seed=2)


def _lavis_pth(root, hf, tok, with_llm: bool):
    llm = save_llm(hf, tok, "t5", root / "llm")
    head, shared = _file_tensors(root / "llm" / "model.safetensors", "lm_head.weight", "shared.weight")
    assert head is not None and not torch.equal(head, shared)
    # the LLM folder itself, read by transformers, is the reference for the adapter's logits
    ref = T5ForConditionalGeneration.from_pretrained(root / "llm").eval()
    state = lavis_state(hf.state_dict(), "t5_proj")
    if with_llm:  # a LAVIS file saved with the LLM (torch state_dict: every tied name too)
        state.update({f"t5_model.{k}": v for k, v in hf.language_model.state_dict().items()})
    encoder = from_hf_llm(root / "hf").image_encoder.to_lavis_state_dict(prefix="visual_encoder.")
    pth = root / ("with_llm.pth" if with_llm else "stage2.pth")
    torch.save({"model": {**state, **encoder}}, pth)
    overrides = dict(image_encoder=vision_block(hf.config.vision_config),
                     qformer=qformer_block(hf.config, text_input=False, lm_head=False), llm=llm, max_txt_len=32)
    return pth, overrides, ref


@pytest.mark.parametrize("with_llm", [False, True], ids=["llm-from-path", "llm-in-pth"])
def test_lavis_pth_keeps_the_head(t5, with_llm):
    root, _, hf, tok = t5
    pth, overrides, ref = _lavis_pth(root, hf, tok, with_llm)
    ours = load_model("blip2_t5", "tiny", checkpoint=pth, is_eval=True, **overrides)
    dec = torch.zeros(2, 1, dtype=torch.long)
    ids = torch.tensor([[5, 9, 1], [7, 1, 0]])
    with torch.no_grad():
        torch.testing.assert_close(ours.llm.model(input_ids=ids, decoder_input_ids=dec).logits,
                                   ref(input_ids=ids, decoder_input_ids=dec).logits)
    _assert_like_hf(ours, hf, tok, seed=3)


def test_own_format_with_llm_from_path_keeps_the_head(t5, tmp_path):
    root, _, hf, tok = t5
    pth, overrides, _ = _lavis_pth(root, hf, tok, with_llm=False)
    load_model("blip2_t5", "tiny", checkpoint=pth, **overrides).save_pretrained(tmp_path / "ours")
    # the frozen LLM stays in llm.path and is read again from there
    assert _file_tensors(tmp_path / "ours" / "model.safetensors", "llm.model.lm_head.weight") == [None]
    _assert_like_hf(load_model("blip2_t5", checkpoint=tmp_path / "ours", is_eval=True), hf, tok, seed=4)


def test_opt_stays_tied(tmp_path):
    folder, hf, tok = save_hf_blip2(tmp_path / "hf", "opt", seed=3)
    lm = hf.language_model
    assert lm.lm_head.weight is lm.get_input_embeddings().weight
    ours = from_hf_llm(folder)
    assert ours.llm.output_tied
    ours.save_pretrained(tmp_path / "ours")
    again = load_model("blip2_opt", checkpoint=tmp_path / "ours")
    assert again.llm.output_tied
    ours.save_hf(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["text_config"]["tie_word_embeddings"]
    assert from_hf_llm(tmp_path / "out").llm.output_tied
    llm = save_llm(hf, tok, "opt", tmp_path / "llm")
    state = {**lavis_state(hf.state_dict(), "opt_proj"),
             **ours.image_encoder.to_lavis_state_dict(prefix="visual_encoder.")}
    torch.save({"model": state}, tmp_path / "opt.pth")
    from_pth = load_model("blip2_opt", "tiny", checkpoint=tmp_path / "opt.pth", llm=llm,
                          image_encoder=vision_block(hf.config.vision_config),
                          qformer=qformer_block(hf.config, text_input=False, lm_head=False))
    assert from_pth.llm.output_tied
    torch.testing.assert_close(from_pth.llm.model.lm_head.weight, lm.lm_head.weight)
