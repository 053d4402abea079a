"""The demo pipeline end to end at the smoke size, the pieces its table relies on, and its
``--precision recommended`` option.

The module fixture runs ``run_demo`` on the quick plan (tiny corpus, 1-layer Q-Former, a
few steps) in a temporary cache / output folder; the numbers are meaningless at this size,
so the tests check the plumbing against independent readings of the files it wrote.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from omegaconf import OmegaConf

from lavislike_demo.baselines import BlankImage, majority_vqa_accuracy, retrieval_chance
from lavislike_demo.plan import CAPTION, RETRIEVAL, STAGE1, STAGE2, VQA, DemoPlan, precision_overrides
from lavislike_demo.report import Row
from lavislike.errors import ConfigError, LavislikeError
from lavislike.runners.precision import cpu_has_native_bf16

from demo_env import demo_env


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from lavislike_demo.end_to_end import run_demo

    with demo_env(tmp_path_factory.mktemp("demo")) as root:
        yield root, run_demo(DemoPlan(quick=True), check=False)


def test_quick_demo_writes_table_curves_and_examples(demo):
    root, summary = demo
    rows = summary["rows"]
    assert [r.metric for r in rows][:6] == [f"{d} R@{k}" for d in ("image->text", "text->image") for k in (1, 5, 10)]
    assert {r.group for r in rows} == {"retrieval", "captioning", "VQA"}
    assert all(math.isfinite(r.value) for r in rows)
    for stage in ("pretrain_stage1", "pretrain_stage2"):
        run = root / "out" / "blip2_tiny" / stage
        assert (run / "model_best.safetensors").is_file() and (run / "curves.png").is_file()
        assert Image.open(run / "curves.png").size[0] > 100
    paths = summary["paths"]
    page = open(paths["examples (HTML)"]).read()
    n_test = len(json.loads((root / "cache/demo/synthetic/annotations/caption_test.json").read_text()))
    assert page.count("<img ") == min(8, n_test)
    assert Image.open(paths["examples (PNG)"]).size[1] > 160
    assert "clearly above?" in open(paths["table"]).read()


def test_retrieval_row_matches_the_written_metrics(demo):
    root, summary = demo
    (path,) = (root / "out/blip2_tiny/ret_synthetic_eval/result").glob("test*_retrieval.json")
    written = json.loads(path.read_text())
    rows = {r.metric: r for r in summary["rows"]}
    assert rows["image->text R@1"].value == pytest.approx(written["txt_r1"])
    assert rows["text->image R@10"].value == pytest.approx(written["img_r10"])
    n_images = len(json.loads((root / "cache/demo/synthetic/annotations/caption_test.json").read_text()))
    assert rows["text->image R@1"].baselines["chance / majority"] == pytest.approx(100.0 / n_images)


def test_stage2_starts_from_stage1_qformer_and_the_prepared_frozen_parts(demo):
    from transformers import AutoModelForCausalLM

    from lavislike.models.loading import load_model_from_config

    root, _ = demo
    with demo_env(root):
        plan = DemoPlan(quick=True)
        cfg = plan.config(STAGE2)
        model = load_model_from_config(cfg.model)
        stage1 = load_file(str(root / "out/blip2_tiny/pretrain_stage1/model_best.safetensors"))
        own = model.state_dict()
        shared = [k for k in stage1 if k in own]
        assert "qformer.query_tokens" in shared and any(k.startswith("qformer.layers.0.cross_attn") for k in shared)
        for k in shared:
            torch.testing.assert_close(own[k], stage1[k], msg=k)
        llm = AutoModelForCausalLM.from_pretrained(str(root / "cache/demo/opt_tiny"))
        for k, v in llm.state_dict().items():
            torch.testing.assert_close(own["llm.model." + k], v, msg=k)
        encoder = load_file(str(root / "cache/demo/vision_encoder.safetensors"))
        for k, v in encoder.items():
            torch.testing.assert_close(own["image_encoder." + k], v, msg=k)
        assert not any(p.requires_grad for p in model.llm.parameters())
        assert not any(p.requires_grad for p in model.image_encoder.parameters())


def test_llm_text_comes_from_the_train_split_only(demo):
    from lavislike_demo.text_corpus import llm_documents
    from lavislike.processors.text import pre_caption

    root, _ = demo
    ann = root / "cache/demo/synthetic/annotations"
    docs = "".join(llm_documents(ann))
    train = {pre_caption(r["caption"]) for r in json.loads((ann / "caption_train.json").read_text())}
    assert all(c in docs for c in train)
    for split in ("val", "test"):
        for row in json.loads((ann / f"caption_{split}.json").read_text()):
            for cap in row["caption"]:
                assert pre_caption(cap) not in docs


def test_missing_prerequisite_is_one_clear_error(tmp_path, monkeypatch):
    from lavislike_demo import pipeline

    monkeypatch.setenv("LAVISLIKE_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("LAVISLIKE_OUTPUT", str(tmp_path / "out"))
    with pytest.raises(LavislikeError, match="vision_encoder.safetensors"):
        pipeline.train(DemoPlan(quick=True), STAGE1)


def test_majority_baseline_by_hand(tmp_path):
    rows = [
        {"question_type": "color", "answer": ["red"] * 10},
        {"question_type": "color", "answer": ["red"] * 10},
        {"question_type": "color", "answer": ["blue"] * 10},
        {"question_type": "count", "answer": ["2"] * 10},
    ]
    test = [
        {"question_type": "color", "answer": ["red"] * 10},   # majority red: 1
        {"question_type": "color", "answer": ["blue"] * 10},  # 0
        {"question_type": "count", "answer": ["2"] * 10},     # 1
        {"question_type": "count", "answer": ["3"] * 10},     # 0
    ]
    (tmp_path / "vqa_train.json").write_text(json.dumps(rows))
    (tmp_path / "vqa_test.json").write_text(json.dumps(test))
    assert majority_vqa_accuracy(tmp_path) == pytest.approx(50.0)


def test_blank_images_chance_and_verdict():
    blank = BlankImage(16)(Image.new("RGB", (40, 40), "red"))
    assert blank.shape == (3, 16, 16) and not blank.any()
    assert retrieval_chance(5, 100) == 5.0 and retrieval_chance(10, 8) == 100.0
    assert Row("t", "m", 30.0, {"a": 20.0, "b": None}).clearly_above()
    assert not Row("t", "m", 24.0, {"a": 20.0, "b": None}).clearly_above()   # +4 < 5 points
    assert not Row("t", "m", 110.0, {"a": 100.0, "b": 1.0}).clearly_above()  # +10 < 20 % of 100


def test_serve_with_no_arguments_serves_the_demos_runs(demo):
    """``lavislike serve``'s default after the demo: its stage-2 run captions as the demo's
    own captioning evaluation did (same image, same decoding), its stage-1 run matches and
    searches the corpus images; all offline."""
    from lavislike.serve.actions import ServeSession
    from lavislike.serve.command import default_image_folder
    from lavislike.serve.models import load_served

    root, _ = demo
    served = load_served()
    assert [s.model.cfg.arch for s in served] == ["blip2_opt", "blip2"]
    session = ServeSession(served, default_image_folder())
    assert session.image_folder == root / "cache" / "demo" / "synthetic" / "images"
    (path,) = (root / "out/blip2_tiny/caption_synthetic_eval/result").glob("test_epoch*.json")
    written = {r["image_id"]: r["caption"] for r in json.loads(path.read_text())}
    annotations = json.loads((root / "cache/demo/synthetic/annotations/caption_test.json").read_text())
    for ann in annotations[:2]:
        image = session.image_folder / ann["image"]
        # the quick plan's caption evaluation: greedy, at most 8 tokens
        assert session.caption(image, "beam", 1, num_beams=1, max_length=8) == [written[ann["image_id"]]]
    assert 0.0 <= session.match(image, annotations[0]["caption"][0])["itm"] <= 1.0
    assert len(session.search("a red circle", top_k=3)) == 3


RUNS = (STAGE1, STAGE2, RETRIEVAL, CAPTION, VQA)


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="the CPU has no native bf16")
def test_recommended_precision_option_reaches_the_runs(demo):
    """``--precision recommended``: a real stage-1 run trained with the recommended CPU options,
    every run's config carries them, and stage 2's frozen parts are stored in bf16."""
    from lavislike_demo.__main__ import main
    from lavislike.runners.launch import build_runner

    root, _ = demo
    with demo_env(root, out="out_recommended"):  # the fixture's frozen parts, runs of its own
        assert main(["--quick", "--precision", "recommended", "prepare", "stage1"]) == 0
        written = OmegaConf.load(root / "out_recommended/blip2_tiny/pretrain_stage1/config.yaml")
        assert (written.run.frozen_precision, written.run.amp) == ("auto", True)
        plan = DemoPlan(quick=True, precision="recommended")
        for rel in RUNS:
            assert (plan.config(rel).run.frozen_precision, plan.config(rel).run.amp) == ("auto", True), rel
        runner = build_runner(plan.config(STAGE2), plan.path(STAGE2))
        runner.setup()
    model = runner.unwrapped_model
    assert runner.amp_dtype == torch.bfloat16
    for part in (model.image_encoder, model.llm):
        assert {p.dtype for p in part.parameters()} == {torch.bfloat16}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {torch.float32}


def test_default_precision_is_the_configs_fp32_and_stays_without_native_bf16(monkeypatch):
    for rel in RUNS:
        run = DemoPlan(quick=True).config(rel).run
        assert (run.get("frozen_precision", "model"), run.amp) == ("model", False), rel
    monkeypatch.setattr("lavislike.runners.precision.cpu_has_native_bf16", lambda: False)
    assert precision_overrides("recommended") == []
    with pytest.raises(ConfigError, match="'bf16'.*Valid: fp32, recommended"):
        precision_overrides("bf16")
