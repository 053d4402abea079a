"""Question-aware queries (``qformer_text_input``) against transformers' InstructBLIP.

``InstructBlipForConditionalGeneration`` feeds ``qformer_input_ids`` to its Q-Former next to
the learned queries and passes only the query outputs to the LLM: the paper's VQA
fine-tuning set-up. A tiny random one (OPT and T5 LLMs) is built here, its weights copied
into ``blip2_opt`` / ``blip2_t5`` built with ``qformer_text_input=True``, and losses, soft
prompts and greedy generations are compared with it. The same weights without the option
must match InstructBLIP given *no* Q-Former text, whatever the question. LAVIS files: the
text embeddings of a stage-1 ``.pth`` load, and a stage-2 ``.pth`` (which has none) takes
them from ``qformer_text_from``.
"""
from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoTokenizer

from blip2_llm_tiny import NUM_QUERY, VISION_CONFIG, hf_inputs, images, lavis_state, save_llm, spread_weights_
from llm_tiny import tiny_text_config, train_tokenizer
from lavislike.errors import CheckpointError
from lavislike.models import load_model
from lavislike.models.convert.hf import qformer_block, vision_block
from lavislike.models.convert.hf_llm import llm_block

QUESTIONS = ["what is on the table?", "how many people are there in the red car"]
ANSWERS = ["a cup", "two"]
MAX_TXT_LEN = 32


def build_instructblip(kind: str, qformer_vocab: int, seed: int = 0):
    """``(model, llm_tokenizer)``: a random tiny InstructBLIP (eval, fp32) with every
    parameter redrawn far from the tiny default init, so that nothing cancels out."""
    from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration

    tok = train_tokenizer(kind)
    tok.add_tokens(["<image>"], special_tokens=True)
    text = tiny_text_config(kind, vocab_size=len(tok) + 7, width=24)
    config = InstructBlipConfig(
        vision_config=VISION_CONFIG,
        qformer_config=dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=40,
                            vocab_size=qformer_vocab, cross_attention_frequency=2, max_position_embeddings=40,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0),
        text_config=text.to_dict(),
        num_query_tokens=NUM_QUERY,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    model = InstructBlipForConditionalGeneration(config)
    spread_weights_(model, vectors=True)
    return model.eval(), tok


def to_ours(hf_state: dict, model) -> dict:
    """InstructBLIP keys -> ours. The rows that differ from BLIP-2 are written here; the
    rest (vision tower, Q-Former layers, LLM) is BLIP-2's layout, converted by the model."""
    text_rows = {
        "qformer.embeddings.word_embeddings.weight": "qformer.embeddings.word_embeddings.weight",
        "qformer.embeddings.position_embeddings.weight": "qformer.embeddings.position_embeddings.weight",
    }
    blip2_like, text = {}, {}
    for key, value in hf_state.items():
        if key in text_rows:
            text[text_rows[key]] = value
        else:
            blip2_like[key.replace("qformer.embeddings.layernorm.", "qformer.layernorm.")] = value
    out = model.convert_hf_state(blip2_like)
    own = model.state_dict()
    return {**out, **{k: v for k, v in text.items() if k in own}}


@pytest.fixture(scope="module", params=["opt", "t5"])
def setup(request, tmp_path_factory, tiny_bert_tokenizer_dir):
    kind = request.param
    qtok = AutoTokenizer.from_pretrained(str(tiny_bert_tokenizer_dir))
    hf, tok = build_instructblip(kind, qformer_vocab=len(qtok))
    llm_dir = tmp_path_factory.mktemp(f"llm_tok_{kind}")
    tok.save_pretrained(llm_dir)
    arch = "blip2_t5" if kind == "t5" else "blip2_opt"

    def build(question_aware: bool):
        model = load_model(
            arch, "tiny", load_pretrained=False,
            image_encoder=vision_block(hf.config.vision_config),
            ln_vision_eps=hf.config.vision_config.layer_norm_eps,
            qformer=qformer_block(hf.config, text_input=False, lm_head=False),
            llm=llm_block(hf.config.text_config, str(llm_dir)),
            tokenizer=str(tiny_bert_tokenizer_dir), max_txt_len=MAX_TXT_LEN,
            qformer_text_input=question_aware,
        )
        state = to_ours(hf.state_dict(), model)
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and not missing, (missing, unexpected)
        return model.eval()

    return kind, hf, tok, qtok, build(True), build(False)


def qformer_ids(qtok, texts):
    """What InstructBLIP's processor gives its Q-Former: BERT ids, padded to the longest."""
    enc = qtok(texts, padding="longest", truncation=True, max_length=MAX_TXT_LEN, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def no_text(batch: int):
    return torch.zeros(batch, 0, dtype=torch.long), torch.zeros(batch, 0, dtype=torch.long)


def hf_vqa_loss(setup, img, prefixes, targets, q_ids, q_mask):
    """InstructBLIP's LM loss on ``target`` after ``prefix`` (decoder-only: one string with
    the prefix tokens masked; encoder-decoder: prefix in the encoder, target decoded)."""
    kind, hf, tok = setup[:3]
    image_id = hf.config.image_token_index
    with torch.no_grad():
        if kind == "t5":
            ids, mask = hf_inputs(tok, prefixes, "right", image_id)
            out = tok(targets, padding=True, return_tensors="pt")
            labels = out.input_ids.masked_fill(out.attention_mask == 0, -100)
            return hf(pixel_values=img, qformer_input_ids=q_ids, qformer_attention_mask=q_mask, input_ids=ids,
                      attention_mask=mask, labels=labels, decoder_attention_mask=out.attention_mask).loss
        texts = [p + t for p, t in zip(prefixes, targets)]
        ids, mask = hf_inputs(tok, texts, "right", image_id, suffix="\n")
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :NUM_QUERY] = -100
        for b, p in enumerate(prefixes):
            labels[b, NUM_QUERY : NUM_QUERY + len(tok(p).input_ids)] = -100
        return hf(pixel_values=img, qformer_input_ids=q_ids, qformer_attention_mask=q_mask, input_ids=ids,
                  attention_mask=mask, labels=labels).loss


def vqa_texts(kind: str) -> tuple[str, list[str], list[str]]:
    prompt = "Question: {} Short answer:" if kind == "t5" else "Question: {} Answer:"
    prefixes = [prompt.format(q) for q in QUESTIONS]
    targets = ANSWERS if kind == "t5" else [" " + a for a in ANSWERS]
    return prompt, prefixes, targets


def train_inputs(kind: str) -> list[str]:
    """The training ``text_input``: FlanT5 reads it as it is (LAVIS; the model's prompt is
    for generation only), so the batch carries the formatted question, which the Q-Former
    reads too (LAVIS InstructBLIP); OPT's prompt template formats the bare question."""
    return vqa_texts(kind)[1] if kind == "t5" else list(QUESTIONS)


def test_option_builds_the_qformer_text_parts(setup):
    ours, plain = setup[4], setup[5]
    assert ours.cfg.qformer.text_input and ours.qformer.embeddings.word_embeddings is not None
    assert plain.qformer.embeddings.word_embeddings is None
    assert all(layer.text_ffn is None for layer in plain.qformer.layers)
    # the last layer's text outputs are discarded: its FFN is not trained (no DDP hang)
    assert not any(p.requires_grad for p in ours.qformer.layers[-1].text_ffn.parameters())
    assert all(p.requires_grad for p in ours.qformer.layers[0].text_ffn.parameters())
    assert ours.qformer.embeddings.word_embeddings.weight.requires_grad


def test_soft_prompt_matches_instructblip(setup):
    _, hf, _, qtok, ours, _ = setup
    img = images(seed=1)
    q_ids, q_mask = qformer_ids(qtok, QUESTIONS)
    assert not bool(q_mask.all())  # padding is exercised
    with torch.no_grad():
        ref = hf.get_image_features(img, qformer_input_ids=q_ids, qformer_attention_mask=q_mask).pooler_output
        got = ours.soft_prompt(img, QUESTIONS)
        other = ours.soft_prompt(img, list(reversed(QUESTIONS)))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert (got - other).abs().max() > 1e-2  # the queries read the question


def test_vqa_loss_matches_instructblip(setup):
    kind, hf, tok, qtok, ours, _ = setup
    img = images(seed=2)
    prompt, prefixes, targets = vqa_texts(kind)
    ours.cfg.prompt = prompt
    try:
        loss = ours({"image": img, "text_input": train_inputs(kind), "text_output": ANSWERS})["loss"]
    finally:
        ours.cfg.prompt = ""
    ref = hf_vqa_loss(setup, img, prefixes, targets, *qformer_ids(qtok, train_inputs(kind)))
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    blind = hf_vqa_loss(setup, img, prefixes, targets, *no_text(2))
    # ours is far closer to the reference that reads the question than to the blind one (how
    # much the text moves the loss varies with the tiny tokenizer, which training does not
    # reproduce from run to run: 4e-5 to over 1e-3 seen)
    assert abs(loss.item() - blind.item()) > 1e-6 + 10 * abs(loss.item() - ref.item())
    loss.backward()
    assert ours.qformer.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert ours.qformer.layers[0].text_ffn.fc1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in ours.llm.parameters())
    ours.zero_grad()


def test_captioning_feeds_the_prompt_not_the_caption(setup):
    kind, hf, tok, qtok, ours, _ = setup
    img = images(seed=3)
    prompt = "a photo of"
    captions = ["a photo of a dog on a couch", "a photo of two cats"]
    ours.cfg.prompt = prompt
    try:
        loss = ours({"image": img, "text_input": captions})["loss"]
    finally:
        ours.cfg.prompt = ""
    rest = [c[len(prompt):] for c in captions]
    if kind == "t5":
        rest = [r.strip() for r in rest]
    ref = hf_vqa_loss(setup, img, [prompt] * 2, rest, *qformer_ids(qtok, [prompt] * 2))
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)


def _hf_new_tokens(setup, img, prompts, q_texts, **kw):
    kind, hf, tok, qtok = setup[:4]
    ids, mask = hf_inputs(tok, prompts, "right" if kind == "t5" else "left", hf.config.image_token_index)
    q_ids, q_mask = qformer_ids(qtok, q_texts) if q_texts is not None else no_text(len(prompts))
    if kind != "t5":
        kw.setdefault("eos_token_id", tok("\n", add_special_tokens=False).input_ids[-1])
    with torch.no_grad():
        out = hf.generate(pixel_values=img, qformer_input_ids=q_ids, qformer_attention_mask=q_mask,
                          input_ids=ids, attention_mask=mask, pad_token_id=tok.pad_token_id, **kw)
    return out[:, 1:] if kind == "t5" else out[:, ids.shape[1]:]


def test_greedy_answers_match_instructblip(setup):
    kind, hf, tok, qtok, ours, _ = setup
    img = images(seed=4)
    prompt, prefixes, _ = vqa_texts(kind)
    expected = _hf_new_tokens(setup, img, prefixes, QUESTIONS, num_beams=1, max_new_tokens=5, min_new_tokens=2)
    with torch.no_grad():
        gen = ours.llm.generation_kwargs(num_beams=1, max_length=5, min_length=2)
        got = ours.llm.generate_ids(ours.soft_prompt(img, QUESTIONS), prefixes, **gen)
    assert got.tolist() == expected.tolist()
    answers = ours.predict_answers({"image": img, "text_input": QUESTIONS}, num_beams=1, max_len=5, min_len=2,
                                   prompt=prompt)
    assert answers == [t.strip() for t in tok.batch_decode(expected, skip_special_tokens=True)]
    # another question in the Q-Former (same LLM text): still InstructBLIP's tokens
    swapped = list(reversed(QUESTIONS))
    expected = _hf_new_tokens(setup, img, prefixes, swapped, num_beams=1, max_new_tokens=5, min_new_tokens=2)
    with torch.no_grad():
        got = ours.llm.generate_ids(ours.soft_prompt(img, swapped), prefixes, **gen)
    assert got.tolist() == expected.tolist()


def test_generate_feeds_the_prompt(setup):
    _, hf, tok, qtok, ours, _ = setup
    img = images(seed=5)
    prompts = ["a photo of", "Question: how many people are there? Answer:"]
    expected = _hf_new_tokens(setup, img, prompts, prompts, num_beams=1, max_new_tokens=4, min_new_tokens=4)
    captions = ours.generate({"image": img, "prompt": prompts}, num_beams=1, max_length=4, min_length=4)
    assert captions == [t.strip() for t in tok.batch_decode(expected, skip_special_tokens=True)]


def test_without_the_option_the_qformer_ignores_the_question(setup):
    kind, hf, tok, qtok, _, plain = setup
    img = images(seed=6)
    prompt, prefixes, targets = vqa_texts(kind)
    with torch.no_grad():
        a = plain.soft_prompt(img, QUESTIONS)
        b = plain.soft_prompt(img, ["something else entirely", "?"])
        ref = hf.get_image_features(img, qformer_input_ids=no_text(2)[0]).pooler_output
    assert torch.equal(a, b)
    torch.testing.assert_close(a, ref, atol=1e-5, rtol=1e-5)
    plain.cfg.prompt = prompt
    try:
        loss = plain({"image": img, "text_input": train_inputs(kind), "text_output": ANSWERS})["loss"]
    finally:
        plain.cfg.prompt = ""
    assert loss.item() == pytest.approx(hf_vqa_loss(setup, img, prefixes, targets, *no_text(2)).item(), abs=1e-5)
    expected = _hf_new_tokens(setup, img, prefixes, None, num_beams=1, max_new_tokens=4, min_new_tokens=1)
    answers = plain.predict_answers({"image": img, "text_input": QUESTIONS}, num_beams=1, max_len=4, prompt=prompt)
    assert answers == [t.strip() for t in tok.batch_decode(expected, skip_special_tokens=True)]


def test_soft_prompt_needs_the_texts(setup):
    from lavislike.errors import DataError

    ours = setup[4]
    with pytest.raises(DataError, match="qformer_text_input"):
        ours.soft_prompt(images())
    with pytest.raises(DataError, match="one per image"):
        ours.soft_prompt(images(), ["just one"])


# -- LAVIS checkpoints ---------------------------------------------------------------------
def is_text_part(lavis_key: str) -> bool:
    """Word/position embeddings and text FFNs: what LAVIS stage-2 files lack."""
    return lavis_key.startswith(("Qformer.bert.embeddings.word_", "Qformer.bert.embeddings.position_")) or bool(
        re.search(r"\.layer\.\d+\.(intermediate|output)\.", lavis_key)
    )


def test_lavis_checkpoints_load_the_qformer_text_parts(setup, tmp_path):
    kind, hf, tok, qtok, ours, _ = setup
    llm = save_llm(hf, tok, kind, tmp_path / "llm")
    full = lavis_state(hf.state_dict(), "t5_proj" if kind == "t5" else "opt_proj")
    encoder = ours.image_encoder.to_lavis_state_dict(prefix="visual_encoder.")
    stage2 = {k: v for k, v in full.items() if not is_text_part(k)}
    assert len(stage2) < len(full) and not any("word_embeddings" in k for k in stage2)
    paths = {}
    for name, state in (("full", full), ("stage2", stage2), ("stage1_text", full)):
        paths[name] = tmp_path / f"{name}.pth"
        torch.save({"model": {**state, **encoder}}, paths[name])

    def load(checkpoint, **extra):
        return load_model(
            "blip2_t5" if kind == "t5" else "blip2_opt", "tiny", is_eval=True, checkpoint=str(checkpoint),
            image_encoder=vision_block(hf.config.vision_config), ln_vision_eps=hf.config.vision_config.layer_norm_eps,
            qformer=qformer_block(hf.config, text_input=False, lm_head=False), llm=llm,
            tokenizer=ours.cfg.tokenizer, max_txt_len=MAX_TXT_LEN, qformer_text_input=True, **extra,
        )

    img = images(seed=7)
    prompt, prefixes, targets = vqa_texts(kind)
    ref = hf_vqa_loss(setup, img, prefixes, targets, *qformer_ids(qtok, train_inputs(kind)))
    with pytest.raises(CheckpointError, match="qformer_text_from"):
        load(paths["stage2"])
    for model in (load(paths["full"]), load(paths["stage2"], qformer_text_from=str(paths["stage1_text"]))):
        torch.testing.assert_close(model.qformer.embeddings.word_embeddings.weight,
                                   hf.qformer.embeddings.word_embeddings.weight)
        torch.testing.assert_close(model.qformer.layers[1].text_ffn.fc2.weight,
                                   hf.qformer.encoder.layer[1].output.dense.weight)
        model.cfg.prompt = prompt
        with torch.no_grad():
            loss = model({"image": img, "text_input": train_inputs(kind), "text_output": ANSWERS})["loss"]
        assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
