"""``blip2_t5`` (encoder-decoder LLMs) against transformers' ``Blip2ForConditionalGeneration``."""
from __future__ import annotations

import pytest
import torch
from transformers import Blip2ForConditionalGeneration

from blip2_llm_tiny import assert_generation_matches, hf_inputs, hf_t5_loss, images, save_hf_blip2
from lavislike.models.blip2_llm import Blip2T5
from lavislike.models.convert.hf_llm import from_hf_llm

INPUTS = ["a dog on", "two cats laying on a"]
OUTPUTS = ["a couch", "red blanket"]
PROMPTS = ["a photo of", "Question: how many people are there? Short answer:"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder, hf, tok = save_hf_blip2(tmp_path_factory.mktemp("t5"), "t5", seed=1, untied=True)
    return from_hf_llm(folder), hf, tok


def test_from_hf_builds_blip2_t5(pair):
    ours, hf, _ = pair
    assert isinstance(ours, Blip2T5) and ours.is_encoder_decoder
    # the folder's activation is kept (this random one says gelu_new; LAVIS's FlanT5 gelu)
    assert ours.llm.model.config.dense_act_fn == hf.config.text_config.dense_act_fn
    assert all(not p.requires_grad for p in ours.llm.parameters())


def test_prefix_lm_loss_matches_transformers(pair):
    ours, hf, tok = pair
    img = images()
    loss = ours({"image": img, "text_input": INPUTS, "text_output": OUTPUTS})["loss"]
    assert loss.item() == pytest.approx(hf_t5_loss(hf, tok, img, INPUTS, OUTPUTS).item(), abs=1e-5)
    loss.backward()
    assert ours.llm_proj.weight.grad.abs().sum() > 0 and all(p.grad is None for p in ours.llm.parameters())
    ours.zero_grad()


def test_prompted_captions_put_the_prompt_in_the_encoder(pair):
    ours, hf, tok = pair
    img = images(seed=1)
    ours.cfg.prompt = "a photo of"
    try:
        loss = ours({"image": img, "text_input": ["a photo of a dog", "a photo of two cats"]})["loss"]
    finally:
        ours.cfg.prompt = ""
    expected = hf_t5_loss(hf, tok, img, ["a photo of"] * 2, ["a dog", "two cats"])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_training_feeds_text_input_without_the_prompt(pair):
    """LAVIS's Blip2T5.forward: text_input into the encoder as it is; the model's prompt is
    for generation only."""
    ours, hf, tok = pair
    img = images(seed=8)
    ours.cfg.prompt = "a photo of"
    try:
        loss = ours({"image": img, "text_input": INPUTS, "text_output": OUTPUTS})["loss"]
    finally:
        ours.cfg.prompt = ""
    assert loss.item() == pytest.approx(hf_t5_loss(hf, tok, img, INPUTS, OUTPUTS).item(), abs=1e-5)


def test_plain_captions_are_split_for_prefix_lm(pair):
    ours, hf, tok = pair
    img = images(seed=2)
    captions = ["a man riding a bike down the street", "an orange and white cat"]
    torch.manual_seed(0)
    loss = ours({"image": img, "text_input": captions})["loss"]
    torch.manual_seed(0)
    cuts = [int(torch.randint(1, len(c.split()), ()).item()) for c in captions]
    inputs = [" ".join(c.split()[:k]) for c, k in zip(captions, cuts)]
    outputs = [" ".join(c.split()[k:]) for c, k in zip(captions, cuts)]
    assert all(inputs) and all(outputs)
    assert loss.item() == pytest.approx(hf_t5_loss(hf, tok, img, inputs, outputs).item(), abs=1e-5)


def _hf_generate(hf, tok, img, prompts, **kw):
    ids, mask = hf_inputs(tok, prompts, "right", hf.config.image_token_index)
    with torch.no_grad():
        out = hf.generate(pixel_values=img, input_ids=ids, attention_mask=mask, **kw)
    return out[:, 1:]  # the decoder start token


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_matches_transformers(pair, num_beams):
    ours, hf, tok = pair
    img = images(seed=3)
    expected = _hf_generate(hf, tok, img, PROMPTS, num_beams=num_beams, max_new_tokens=6, min_new_tokens=2)
    assert_generation_matches(ours, tok, img, PROMPTS, expected, num_beams=num_beams, max_length=6, min_length=2)


def test_predict_answers_generate_matches_transformers(pair):
    ours, hf, tok = pair
    img = images(seed=4)
    questions = ["what is on the table?", "how many?"]
    answers = ours.predict_answers({"image": img, "text_input": questions}, num_beams=3, max_len=4,
                                   beam_search="transformers")
    expected = _hf_generate(hf, tok, img, [f"Question: {q} Short answer:" for q in questions],
                            num_beams=3, max_new_tokens=4, min_new_tokens=1, length_penalty=-1.0)
    assert answers == [t.strip() for t in tok.batch_decode(expected, skip_special_tokens=True)]


def test_answer_ranking_picks_the_most_likely_answer(pair):
    ours, hf, tok = pair
    img = images(seed=5)
    questions = ["what is on the table?", "what color is the car?"]
    candidates = ["yes", "no", "a red car", "two", "cat", "blue"]
    got = ours.predict_answers({"image": img, "text_input": questions}, inference_method="rank",
                               answer_list=candidates)
    scores = torch.empty(2, len(candidates))
    for b, q in enumerate(questions):
        for a, ans in enumerate(candidates):
            n = len(tok(ans).input_ids)
            scores[b, a] = -hf_t5_loss(hf, tok, img[b : b + 1], [f"Question: {q} Short answer:"], [ans]) * n
    assert got == [candidates[i] for i in scores.argmax(1).tolist()]


def test_export_round_trip(pair, tmp_path):
    ours, hf, tok = pair
    ours.save_hf(tmp_path)
    back = Blip2ForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert back.config.text_config.dense_act_fn == hf.config.text_config.dense_act_fn
    img = images(seed=6)
    ids, mask = hf_inputs(tok, PROMPTS, "right", hf.config.image_token_index)
    dec = torch.zeros(2, 1, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(
            back(pixel_values=img, input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits,
            hf(pixel_values=img, input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits,
            atol=1e-5, rtol=1e-5,
        )
    kw = dict(num_beams=2, max_new_tokens=5, min_new_tokens=5)
    assert _hf_generate(back, tok, img, PROMPTS, **kw).tolist() == _hf_generate(hf, tok, img, PROMPTS, **kw).tolist()
