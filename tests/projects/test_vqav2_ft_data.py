"""The VQAv2 fine-tuning config trains on VQAv2 and Visual Genome QA (the paper's VQA data),
mixed by corpus size."""
from pathlib import Path

from lavislike.config import load_config

CFG = Path(__file__).resolve().parents[2] / "projects/blip2/train/vqav2_ft.yaml"


def test_vqav2_finetune_mixes_vg_qa_at_490_px(tmp_path, monkeypatch):
    monkeypatch.setenv("LAVISLIKE_CACHE", str(tmp_path))
    cfg = load_config(CFG, [])
    assert set(cfg.datasets) == {"coco_vqa", "vg_vqa"}
    vg = cfg.datasets.vg_vqa
    assert vg.build_info.annotations.train.storage == "vg/annotations/vg_qa.json"
    for block in cfg.datasets.values():
        assert block.vis_processor.train.image_size == block.vis_processor.eval.image_size == 490
        assert block.text_processor.train.name == "blip_question"
        assert block.sample_ratio is None  # each corpus weighs its number of questions
    assert list(cfg.run.train_splits) == ["train"] and list(cfg.run.test_splits) == ["test"]
