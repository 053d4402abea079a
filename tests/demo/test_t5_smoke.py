"""The tiny T5 project (``projects/blip2_tiny/train/pretrain_stage2_t5.yaml``) at the smoke size.

The module fixture prepares what the config reads (corpus, image encoder, a few stage-1
steps, the quick tiny T5) in a temporary cache / output folder and trains the config a few
steps through the demo's pipeline functions; the tests read what it wrote with
``transformers`` / ``safetensors`` and the text processors, not through the code under test.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lavislike_demo import pipeline
from lavislike_demo.plan import STAGE1, STAGE2_T5, DemoPlan
from lavislike_demo.text_t5 import t5_pairs
from lavislike.errors import CheckpointError

from demo_env import demo_env

# a few optimizer steps and one cheap validation each (the quick plan sizes the rest)
FEW_STAGE1 = ("run.max_iters=2", "run.iters_per_inner_epoch=2")
FEW_STAGE2 = ("run.max_epoch=1", "run.batch_size_train=8", "run.warmup_steps=1", "run.num_beams=1",
              "run.max_len=6", "run.min_len=1")


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory):
    from lavislike_demo.prepare import ensure_corpus, ensure_image_encoder, ensure_qformer_init, ensure_t5

    with demo_env(tmp_path_factory.mktemp("demo_t5")) as root:
        plan = DemoPlan(quick=True, extra=FEW_STAGE1)
        corpus = ensure_corpus(plan)
        ensure_qformer_init(plan, corpus)
        ensure_image_encoder(plan)
        pipeline.train(plan, STAGE1)
        with pytest.raises(CheckpointError) as missing:
            pipeline.train(DemoPlan(quick=True, extra=FEW_STAGE2), STAGE2_T5)
        t5_dir, _ = ensure_t5(plan, corpus)
        summary = pipeline.train(DemoPlan(quick=True, extra=FEW_STAGE2), STAGE2_T5)
        yield root, corpus, t5_dir, summary, str(missing.value)


def test_missing_t5_names_the_prepare_command(t5_run):
    root, *_, message = t5_run
    assert message == (f"model.llm.path: {root / 'cache/demo/t5_tiny'} not found; "
                       "create it with: python -m lavislike_demo prepare t5")


def test_the_tiny_t5_is_an_ordinary_t5_folder(t5_run):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    _, _, t5_dir, _, _ = t5_run
    tok = AutoTokenizer.from_pretrained(str(t5_dir))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(t5_dir))
    assert model.config.model_type == "t5" and model.config.dense_act_fn == "gelu"
    ids = tok("a red circle").input_ids
    assert ids[-1] == tok.eos_token_id == model.config.eos_token_id  # T5: </s> appended, no BOS
    assert tok.convert_ids_to_tokens(ids[:-1]) == tok.tokenize("a red circle")
    assert tok.pad_token_id == model.config.decoder_start_token_id == 0


def test_stage2_t5_trains_the_projection_from_stage1(t5_run):
    root, _, t5_dir, summary, _ = t5_run
    best = load_file(summary["best"])
    assert not any(k.startswith(("llm.", "image_encoder.")) for k in best)  # frozen parts stay out
    t5_width = json.loads((t5_dir / "config.json").read_text())["d_model"]
    assert best["llm_proj.weight"].shape == (t5_width, 384)
    rows = [json.loads(l) for l in (root / "out/blip2_tiny/pretrain_stage2_t5/metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert train and all(math.isfinite(r["loss_lm"]) for r in train)
    assert any(r["split"] == "synthetic_caption/val" and "CIDEr" in r for r in rows)


def test_stage2_t5_starts_from_stage1_and_the_prepared_t5(t5_run, monkeypatch):
    from transformers import AutoModelForSeq2SeqLM

    from lavislike.models.loading import load_model_from_config

    root, _, t5_dir, _, _ = t5_run
    monkeypatch.setenv("LAVISLIKE_CACHE", str(root / "cache"))
    monkeypatch.setenv("LAVISLIKE_OUTPUT", str(root / "out"))
    cfg = DemoPlan(quick=True).config(STAGE2_T5)
    model = load_model_from_config(cfg.model)
    own = model.state_dict()
    stage1 = load_file(str(root / "out/blip2_tiny/pretrain_stage1/model_best.safetensors"))
    shared = [k for k in stage1 if k in own]
    assert "qformer.query_tokens" in shared
    for k in shared:
        torch.testing.assert_close(own[k], stage1[k], msg=k)
    for k, v in AutoModelForSeq2SeqLM.from_pretrained(str(t5_dir)).state_dict().items():
        torch.testing.assert_close(own[f"llm.model.{k}"], v, msg=k)
    assert not any(p.requires_grad for p in model.llm.parameters())


def test_training_captions_are_split_for_prefix_lm(t5_run, monkeypatch):
    from lavislike.processors import build_processor
    from lavislike.processors.text import pre_caption

    root, *_ = t5_run
    monkeypatch.setenv("LAVISLIKE_CACHE", str(root / "cache"))
    cfg = DemoPlan(quick=True).config(STAGE2_T5)
    block = cfg.datasets.synthetic_caption.text_processor
    caption = "A large Red circle, in the top left corner."
    torch.manual_seed(0)
    out = build_processor(block.train, "train")(caption)
    words = pre_caption(caption).split()
    prefix = out["text_input"].split()
    assert 1 <= len(prefix) <= len(words) // 2  # the paper's split: a prefix, then the target
    assert prefix + out["text_output"].split() == words
    assert build_processor(block.eval, "eval")(caption) == pre_caption(caption)


def test_t5_text_comes_from_the_train_split_only(t5_run):
    from lavislike.processors.text import pre_caption

    _, corpus, _, _, _ = t5_run
    ann = corpus / "annotations"
    text = "\n".join(s + "\n" + t for s, t in t5_pairs(ann))
    for row in json.loads((ann / "caption_train.json").read_text()):
        assert pre_caption(row["caption"]) in text
    for split in ("val", "test"):
        for row in json.loads((ann / f"caption_{split}.json").read_text()):
            for cap in row["caption"]:
                assert pre_caption(cap) not in text
