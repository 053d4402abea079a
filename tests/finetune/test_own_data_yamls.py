"""projects/blip2/train/*_own_data.yaml are what `lavislike finetune` writes: the task's
COCO / VQAv2 recipe (model, hyper-parameters, processors) with the corpus swapped."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lavislike.finetune import experiment

TRAIN = Path(__file__).resolve().parents[2] / "projects" / "blip2" / "train"
CASES = [("captioning", "caption_own_data", "caption_coco_ft", "own_caption"),
         ("vqa", "vqa_own_data", "vqav2_ft", "own_vqa"),
         ("retrieval", "retrieval_own_data", "retrieval_coco_ft", "own_retrieval")]
SPLIT_KEYS = ("output_dir", "train_splits", "valid_splits", "test_splits")


def args_for(task: str, **kw) -> argparse.Namespace:
    base = dict(task=task, data="DATA", val=None, test=None, images=None, model=None, model_type=None,
                output="OUT", dry_run=True, cfg_path=None, overrides=[])
    return argparse.Namespace(**{**base, **kw})


def plain(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


@pytest.mark.parametrize("task,own,recipe,name", CASES)
def test_own_data_yaml_is_the_recipe_with_the_corpus_swapped(task, own, recipe, name):
    written, saved, paper = experiment(args_for(task)), plain(TRAIN / f"{own}.yaml"), plain(TRAIN / f"{recipe}.yaml")
    for exp in (written, saved):
        assert exp["datasets"][name].pop("data") and exp["run"].pop("output_dir")
    assert saved == written
    # against the recipe file itself: the same model and run keys, its corpus's processors
    assert saved["model"] == paper["model"]
    assert {k: v for k, v in saved["run"].items() if k not in SPLIT_KEYS} == \
        {k: v for k, v in paper["run"].items() if k not in SPLIT_KEYS}
    corpus = next(iter(paper["datasets"].values()))
    assert saved["datasets"][name] == {k: corpus[k] for k in ("vis_processor", "text_processor")}
    assert saved["run"]["valid_splits"] == ["val"] and saved["run"]["test_splits"] == []


def test_another_model_type_takes_its_own_parts_and_image_size():
    exp = experiment(args_for("captioning", model="blip2_opt", model_type="tiny", overrides=["run.max_epoch=2"]))
    # the recipe's ViT-g at 364 px and its weights belong to caption_coco_opt2.7b, not to `tiny`
    assert exp["model"] == {"arch": "blip2_opt", "model_type": "tiny", "prompt": "a photo of"}
    assert exp["datasets"]["own_caption"]["vis_processor"]["eval"] == {"name": "blip_image_eval", "image_size": 32}
    assert exp["run"]["max_epoch"] == 2 and exp["run"]["init_lr"] == 1e-5
    ret = experiment(args_for("retrieval", model="blip2", model_type="tiny"))
    assert ret["model"] == {"arch": "blip2", "model_type": "tiny"}  # a stage-1 model has no prompt
