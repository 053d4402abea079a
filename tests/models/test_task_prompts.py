"""The captioning and VQA tasks' ``run.prompt`` reaching a real (tiny) BLIP-2 OPT, checked
against what transformers' ``Blip2ForConditionalGeneration`` generates after that prompt.

LAVIS's interface: the caption prompt is the model's ``prompt``, overridden per batch by
``samples["prompt"]``; the VQA task passes its prompt template to ``predict_answers``,
where ``""`` means the bare question. ``run.prompt`` unset leaves the model's own.
"""
from __future__ import annotations

import pytest
import torch

from blip2_llm_tiny import hf_new_tokens, images, newline_id, save_hf_blip2
from lavislike.errors import ConfigError
from lavislike.models import load_model
from lavislike.models.convert.hf_llm import from_hf_llm
from lavislike.tasks.captioning import CaptionTask
from lavislike.tasks.vqa import VQATask

QUESTIONS = ["what is on the table?", "how many dogs?"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder, hf, tok = save_hf_blip2(tmp_path_factory.mktemp("opt"), "opt")
    return from_hf_llm(folder), hf, tok


def _hf_texts(hf, tok, img, prompts, **kw) -> list[str]:
    new = hf_new_tokens(hf, tok, img, prompts, eos_token_id=newline_id(tok), **kw)
    return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]


def _captions(model, img, **run) -> list[str]:
    task = CaptionTask({"num_beams": 1, "max_len": 6, "min_len": 2, **run})
    return [r["caption"] for r in task.valid_step(model, {"image": img, "image_id": torch.tensor([5, 6])})]


def test_caption_run_prompt_reaches_the_llm(pair):
    ours, hf, tok = pair
    img = images(seed=4)
    expected = _hf_texts(hf, tok, img, ["a photo of"] * 2, num_beams=1, max_new_tokens=6, min_new_tokens=2)
    assert _captions(ours, img, prompt="a photo of") == expected
    # the model's prompt is "": without the prompt the captions are others
    assert _captions(ours, img) != expected


def test_caption_without_run_prompt_uses_the_models_prompt(pair):
    ours, hf, tok = pair
    img = images(seed=5)
    ours.cfg.prompt = "a picture of"
    try:
        got = _captions(ours, img)
    finally:
        ours.cfg.prompt = ""
    assert got == _hf_texts(hf, tok, img, ["a picture of"] * 2, num_beams=1, max_new_tokens=6, min_new_tokens=2)


def test_caption_run_prompt_on_a_model_without_prompts_is_refused():
    stage1 = load_model("blip2", "tiny")
    with pytest.raises(ConfigError, match=r"run.prompt: 'a photo of' .*Blip2"):
        _captions(stage1, torch.zeros(2, 3, 32, 32), prompt="a photo of")


def _answers(model, img, **run) -> list[str]:
    task = VQATask({"num_beams": 1, "max_len": 4, "min_len": 1, **run})
    rows = task.valid_step(model, {"image": img, "text_input": QUESTIONS, "question_id": [1, 2]})
    return [r["answer"] for r in rows]


@pytest.mark.parametrize("run, template", [
    ({}, "Question: {} Answer:"),  # unset: the model's own (the paper's for OPT)
    ({"prompt": ""}, "{}"),  # LAVIS: an empty prompt is the bare question
    ({"prompt": "Q: {} A:"}, "Q: {} A:"),
])
def test_vqa_prompt(pair, run, template):
    ours, hf, tok = pair
    img = images(seed=6)
    expected = _hf_texts(hf, tok, img, [template.format(q) for q in QUESTIONS], num_beams=1, max_new_tokens=4,
                         min_new_tokens=1, length_penalty=-1.0)
    assert _answers(ours, img, **run) == expected
