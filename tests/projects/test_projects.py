"""Every experiment YAML under projects/ loads against the typed schemas, and the BLIP-2
configs carry the paper's settings (section 3.4 / Table 2 of the paper, not LAVIS's)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lavislike.config import load_config

REPO = Path(__file__).resolve().parents[2]
PROJECTS = REPO / "projects"
ALL_YAMLS = sorted(PROJECTS.rglob("*.yaml"))
BLIP2 = PROJECTS / "blip2"
GPUS = 16  # the paper's one node of 16 A100s; per-GPU batches are written for it


def _load(rel: str):
    return load_config(BLIP2 / rel, [])


def test_projects_exist():
    names = {str(p.relative_to(BLIP2)) for p in BLIP2.rglob("*.yaml")}
    for need in ("train/pretrain_stage1.yaml", "train/pretrain_stage2.yaml", "train/pretrain_stage2_t5.yaml",
                 "train/caption_coco_ft.yaml", "train/retrieval_coco_ft.yaml", "train/vqav2_ft.yaml",
                 "eval/vqav2_zeroshot_opt_eval.yaml", "eval/vqav2_zeroshot_flant5xl_eval.yaml",
                 "eval/okvqa_zeroshot_opt_eval.yaml", "eval/okvqa_zeroshot_flant5xl_eval.yaml",
                 "eval/gqa_zeroshot_opt_eval.yaml", "eval/gqa_zeroshot_flant5xl_eval.yaml",
                 "eval/caption_nocaps_eval.yaml", "eval/caption_coco_opt2.7b_eval.yaml",
                 "eval/ret_coco_eval.yaml", "eval/ret_flickr_eval.yaml"):
        assert need in names


@pytest.mark.parametrize("path", ALL_YAMLS, ids=[str(p.relative_to(PROJECTS)) for p in ALL_YAMLS])
def test_every_project_yaml_loads_and_resolves(path, tmp_path, monkeypatch):
    monkeypatch.setenv("LAVISLIKE_CACHE", str(tmp_path))
    cfg = load_config(path, [])
    # interpolations (${cache:...}, ${oc.env:...}) resolve without the data being there
    text = OmegaConf.to_yaml(cfg, resolve=True)
    assert "???" not in text
    assert cfg.run.task and cfg.datasets


def test_project_yamls_open_with_a_header_comment():
    for path in BLIP2.rglob("*.yaml"):
        first = path.read_text().lstrip().splitlines()[0]
        assert first.startswith("#"), f"{path} has no header comment"


def test_headers_state_the_numbers_to_reproduce():
    for path in BLIP2.rglob("*.yaml"):
        header = "\n".join(l for l in path.read_text().splitlines() if l.startswith("#"))
        assert "Reproduces" in header and re.search(r"\d+\.\d", header), path


def test_run_scripts_name_existing_configs():
    for script in (REPO / "run_scripts").glob("*.sh"):
        for rel in re.findall(r"(projects/\S+\.yaml)", script.read_text()):
            assert (REPO / rel).is_file(), f"{script.name} names a missing {rel}"


def _paper_optimizer(run, steps, min_lr):
    assert run.runner == "runner_iter" and run.max_iters == steps
    assert run.lr_sched == "linear_warmup_cosine_lr"
    assert (run.beta1, run.beta2, run.weight_decay) == (0.9, 0.98, 0.05)
    assert run.init_lr == pytest.approx(1e-4) and run.warmup_steps == 2000
    assert run.min_lr == pytest.approx(min_lr)


PRETRAIN_CORPORA = {"coco_caption", "vg_caption", "conceptual_caption_3m", "conceptual_caption_12m",
                    "sbu_caption", "laion"}


def _corpus_mix(cfg):
    assert set(cfg.datasets) == PRETRAIN_CORPORA
    ratios = {name: block.sample_ratio for name, block in cfg.datasets.items()}
    # by corpus size: LAION's 115M dominate, then CC12M, CC3M, SBU, COCO / VG
    assert ratios["laion"] > ratios["conceptual_caption_12m"] > ratios["conceptual_caption_3m"] > \
        ratios["sbu_caption"] > max(ratios["coco_caption"], ratios["vg_caption"])
    total = sum(ratios.values())
    assert 0.85 < ratios["laion"] / total < 0.92  # 115M of 129M images


def test_stage1_has_the_paper_settings():
    cfg = _load("train/pretrain_stage1.yaml")
    _paper_optimizer(cfg.run, 250_000, cfg.run.min_lr)
    assert cfg.run.batch_size_train * GPUS * cfg.run.accum_grad_iters == 1680
    assert cfg.model.arch == "blip2" and cfg.model.model_type == "pretrain"
    assert cfg.model.load_pretrained is False  # trained from BERT, not the released weights
    assert cfg.model.image_encoder.name == "eva_clip_g" and cfg.model.image_encoder.freeze
    assert cfg.model.qformer.num_query_token == 32
    _corpus_mix(cfg)
    for block in cfg.datasets.values():
        assert block.vis_processor.train.name == "blip2_image_train"  # crop + flip, no RandAugment
        assert block.vis_processor.train.image_size == 224
    assert cfg.run.task == "image_text_pretrain"


def test_stage1_vitL_batch_is_documented():
    text = (BLIP2 / "train/pretrain_stage1.yaml").read_text()
    assert "2320" in text and "pretrain_vitL" in text


@pytest.mark.parametrize("rel, arch, batch", [("train/pretrain_stage2.yaml", "blip2_opt", 1920),
                                               ("train/pretrain_stage2_t5.yaml", "blip2_t5", 1520)])
def test_stage2_has_the_paper_settings(rel, arch, batch):
    cfg = _load(rel)
    _paper_optimizer(cfg.run, 80_000, 5e-5)
    assert cfg.run.batch_size_train * GPUS * cfg.run.accum_grad_iters == batch
    assert cfg.model.arch == arch and cfg.model.llm.freeze
    # initialised from stage 1: our own stage-1 output, not the released stage-2 weights
    assert "pretrain_stage1" in cfg.model.pretrained and cfg.model.hf_hub_id is None
    _corpus_mix(cfg)


def test_stage2_t5_uses_prefix_lm(monkeypatch):
    cfg = _load("train/pretrain_stage2_t5.yaml")
    for block in cfg.datasets.values():
        assert block.text_processor.train.prefix_lm is True
    opt = _load("train/pretrain_stage2.yaml")
    assert all(not b.text_processor.train.get("prefix_lm", False) for b in opt.datasets.values())


def test_stage2_checkpoint_can_be_pointed_elsewhere(monkeypatch):
    monkeypatch.setenv("BLIP2_STAGE1_CKPT", "/ckpts/stage1.safetensors")
    assert _load("train/pretrain_stage2.yaml").model.pretrained == "/ckpts/stage1.safetensors"


def test_finetune_configs_train_the_image_encoder():
    cap = _load("train/caption_coco_ft.yaml")
    assert cap.model.prompt == "a photo of" and not cap.model.image_encoder.freeze
    assert cap.datasets.coco_caption.text_processor.train.prompt == "a photo of "
    assert cap.run.task == "captioning" and cap.run.init_lr == pytest.approx(1e-5) and cap.run.max_epoch == 5
    ret = _load("train/retrieval_coco_ft.yaml")
    assert ret.model.arch == "blip2" and not ret.model.image_encoder.freeze
    assert ret.run.task == "retrieval" and ret.run.k_test == 128 and ret.run.layer_decay == 0.95
    assert ret.model.load_finetuned is False
    vqa = _load("train/vqav2_ft.yaml")
    assert not vqa.model.image_encoder.freeze and vqa.run.task == "vqa"
    assert vqa.model.prompt == "Question: {} Answer:" and vqa.run.length_penalty == -1
    assert vqa.model.qformer_text_input  # the paper feeds the question to the Q-Former too


@pytest.mark.parametrize("rel", sorted(str(p.relative_to(BLIP2)) for p in (BLIP2 / "eval").glob("*zeroshot*")))
def test_zero_shot_vqa_prompt_matches_the_llm(rel):
    cfg = _load(rel)
    want = {"blip2_opt": "Question: {} Answer:", "blip2_t5": "Question: {} Short answer:"}[cfg.model.arch]
    assert cfg.run.prompt == want
    assert cfg.run.num_beams == 5 and cfg.run.length_penalty == -1.0
    assert cfg.run.evaluate and cfg.run.task in ("vqa", "gqa")
    assert cfg.run.task == ("gqa" if "gqa" in rel else "vqa")


@pytest.mark.parametrize("rel, dataset", [("eval/ret_coco_eval.yaml", "coco_retrieval"),
                                          ("eval/ret_flickr_eval.yaml", "flickr30k")])
def test_retrieval_evals(rel, dataset):
    cfg = _load(rel)
    assert set(cfg.datasets) == {dataset}
    assert cfg.run.task == "retrieval" and cfg.run.k_test == 128 and cfg.run.evaluate
    assert cfg.model.model_type == "coco" and cfg.model.load_finetuned


@pytest.mark.parametrize("rel, dataset", [("eval/caption_nocaps_eval.yaml", "nocaps"),
                                          ("eval/caption_coco_opt2.7b_eval.yaml", "coco_caption")])
def test_caption_evals(rel, dataset):
    cfg = _load(rel)
    assert set(cfg.datasets) == {dataset} and cfg.run.task == "captioning"
    assert cfg.run.prompt == "a photo of" and cfg.run.num_beams == 5
    assert cfg.model.load_finetuned and "caption_coco" in cfg.model.model_type


def test_model_type_override_switches_the_defaults():
    cfg = load_config(BLIP2 / "eval/vqav2_zeroshot_opt_eval.yaml", ["model.model_type=pretrain_opt6.7b"])
    assert "opt-6.7b" in cfg.model.llm.path
