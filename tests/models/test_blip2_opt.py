"""``blip2_opt`` (decoder-only LLMs) against transformers' ``Blip2ForConditionalGeneration``.

A tiny random HF BLIP-2 (OPT, and a LLaMA-style model through the same ``causal_lm``
adapter) is saved in the test and loaded with ``from_hf_llm``; losses, generations, answer
ranking and the exported folder are checked against the HF model itself.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import Blip2ForConditionalGeneration

from blip2_llm_tiny import (NUM_QUERY, assert_generation_matches, hf_inputs, hf_new_tokens, images, newline_id,
                             save_hf_blip2)
from lavislike.models.blip2_llm import Blip2OPT
from lavislike.models.convert.hf_llm import from_hf_llm

TEXTS = ["a dog on a couch", "two cats laying on a red blanket"]
PROMPTS = ["a photo of", "Question: how many people are there? Answer:"]


@pytest.fixture(scope="module", params=["opt", "llama"])
def pair(request, tmp_path_factory):
    folder, hf, tok = save_hf_blip2(tmp_path_factory.mktemp(request.param), request.param)
    return from_hf_llm(folder), hf, tok, folder


def test_from_hf_builds_frozen_llm(pair):
    ours, hf, _, _ = pair
    assert isinstance(ours, Blip2OPT)
    assert all(not p.requires_grad for p in ours.llm.parameters())
    assert ours.llm_proj.weight.requires_grad and ours.qformer.query_tokens.requires_grad
    assert not any(k.startswith("llm.") for k in ours.trainable_state_dict())
    ours.train()
    assert ours.qformer.training and not ours.llm.model.training


@pytest.mark.parametrize("prompt", ["", "a photo of"])
def test_lm_loss_matches_transformers(pair, prompt):
    ours, hf, tok, _ = pair
    ours.cfg.prompt = prompt
    try:
        img = images()
        texts = [f"{prompt} {t}".strip() for t in TEXTS]
        loss = ours({"image": img, "text_input": texts})["loss"]
    finally:
        ours.cfg.prompt = ""
    ids, mask = hf_inputs(tok, texts, "right", hf.config.image_token_index, suffix="\n")
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :NUM_QUERY] = -100
    if prompt:  # the prompt's tokens (BOS included) carry no loss
        labels[:, NUM_QUERY : NUM_QUERY + len(tok(prompt).input_ids)] = -100
    with torch.no_grad():
        ref = hf(pixel_values=img, input_ids=ids, attention_mask=mask, labels=labels).loss
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)


def test_loss_trains_qformer_and_projection_only(pair):
    ours = pair[0]
    ours.zero_grad()
    ours({"image": images(), "text_input": TEXTS})["loss"].backward()
    assert ours.llm_proj.weight.grad.abs().sum() > 0
    assert ours.qformer.layers[0].cross_attn.query.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in ours.llm.parameters())
    assert all(p.grad is None for p in ours.image_encoder.parameters())
    ours.zero_grad()


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_matches_transformers(pair, num_beams):
    ours, hf, tok, _ = pair
    img = images(seed=1)
    kw = dict(num_beams=num_beams, max_new_tokens=7, min_new_tokens=3, eos_token_id=newline_id(tok), length_penalty=1.0)
    expected = hf_new_tokens(hf, tok, img, PROMPTS, **kw)
    assert_generation_matches(ours, tok, img, PROMPTS, expected, num_beams=num_beams, max_length=7, min_length=3)


def test_predict_answers_generate_matches_transformers(pair):
    ours, hf, tok, _ = pair
    img = images(seed=2)
    questions = ["what is on the table?", "how many?"]
    answers = ours.predict_answers({"image": img, "text_input": questions}, num_beams=3, max_len=4, min_len=1,
                                   beam_search="transformers")
    prompts = [f"Question: {q} Answer:" for q in questions]
    expected = hf_new_tokens(hf, tok, img, prompts, num_beams=3, max_new_tokens=4, min_new_tokens=1,
                              eos_token_id=newline_id(tok), length_penalty=-1.0)
    assert answers == [t.strip() for t in tok.batch_decode(expected, skip_special_tokens=True)]


def test_answer_ranking_picks_the_most_likely_answer(pair):
    ours, hf, tok, _ = pair
    img = images(seed=3)
    questions = ["what is on the table?", "what color is the car?"]
    candidates = ["yes", "no", "a red car", "two", "cat", "blue"]
    got = ours.predict_answers({"image": img, "text_input": questions}, inference_method="rank",
                               answer_list=candidates)
    # likelihood of "prompt answer\n" after the image, from the HF model, one pair at a time
    image_id = hf.config.image_token_index
    scores = torch.empty(2, len(candidates))
    with torch.no_grad():
        for b, q in enumerate(questions):
            prompt = f"Question: {q} Answer:"
            n_prompt = len(tok(prompt).input_ids)
            for a, ans in enumerate(candidates):
                ids = torch.tensor([[image_id] * NUM_QUERY + tok(f"{prompt} {ans}\n").input_ids])
                logits = hf(pixel_values=img[b : b + 1], input_ids=ids).logits[0]
                logp = F.log_softmax(logits.float(), -1)
                targets = range(NUM_QUERY + n_prompt, ids.shape[1])
                scores[b, a] = sum(logp[t - 1, ids[0, t]] for t in targets)
    assert got == [candidates[i] for i in scores.argmax(1).tolist()]
    assert len(set(scores.argmax(1).tolist())) > 1 or scores.std() > 0  # a real ranking


def test_export_round_trip(pair, tmp_path):
    ours, hf, tok, _ = pair
    ours.save_hf(tmp_path)
    back = Blip2ForConditionalGeneration.from_pretrained(tmp_path).eval()
    img = images(seed=4)
    ids, mask = hf_inputs(tok, PROMPTS, "left", hf.config.image_token_index)
    with torch.no_grad():
        torch.testing.assert_close(
            back(pixel_values=img, input_ids=ids, attention_mask=mask).logits,
            hf(pixel_values=img, input_ids=ids, attention_mask=mask).logits,
            atol=1e-5, rtol=1e-5,
        )
    kw = dict(num_beams=2, max_new_tokens=5, min_new_tokens=5)
    assert hf_new_tokens(back, tok, img, PROMPTS, **kw).tolist() == hf_new_tokens(hf, tok, img, PROMPTS, **kw).tolist()
    again = from_hf_llm(tmp_path)
    with torch.no_grad():
        a = ours({"image": img, "text_input": TEXTS})["loss"]
        b = again({"image": img, "text_input": TEXTS})["loss"]
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
