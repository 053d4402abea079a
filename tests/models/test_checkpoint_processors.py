"""``load_model_and_preprocess(checkpoint=...)`` builds the processors the checkpoint's
saved config names (``save_pretrained``'s folder, a run folder's ``config.yaml``), as it
builds the model from it; the model type's defaults only where the config has none.

Expected values are written out here: the saved size, the saved prompt and word limit,
the saved normalisation (a mid-grey image normalised by mean 0.5 / std 0.25 is zero).
"""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lavislike.common.checkpoint import save_weights
from lavislike.models import load_model, load_model_and_preprocess, save_pretrained

GREY = Image.new("RGB", (60, 40), (128, 128, 128))
SAVED = {
    "vis_processor": {"train": {"name": "blip2_image_train", "image_size": 48},
                      "eval": {"name": "blip_image_eval", "image_size": 48, "mean": [0.5] * 3, "std": [0.25] * 3}},
    "text_processor": {"train": {"name": "blip_caption", "max_words": 4},
                       "eval": {"name": "blip_caption", "prompt": "a photo of ", "max_words": 4}},
}


@pytest.fixture(scope="module")
def model_48():
    torch.manual_seed(0)
    return load_model("blip2", "tiny", load_pretrained=False, image_encoder={"image_size": 48})


def assert_saved_processors(vis: dict, txt: dict) -> None:
    assert vis["train"](GREY).shape == vis["eval"](GREY).shape == (3, 48, 48)
    # 128/255 = 0.50196: (0.50196 - 0.5) / 0.25, not CLIP's statistics
    torch.testing.assert_close(vis["eval"](GREY), torch.full((3, 48, 48), (128 / 255 - 0.5) / 0.25),
                               rtol=0, atol=1e-5)
    assert txt["eval"]("Two Dogs running in the park!") == "a photo of two dogs running in"
    assert txt["train"]("Two Dogs running in the park!") == "two dogs running in"


def test_a_saved_folder_at_another_image_size_gives_processors_of_that_size(model_48, tmp_path):
    save_pretrained(model_48, tmp_path / "m")
    _, vis, _ = load_model_and_preprocess("blip2", checkpoint=tmp_path / "m")
    assert vis["train"](GREY).shape == vis["eval"](GREY).shape == (3, 48, 48)


def test_processors_saved_with_the_model_are_the_ones_loaded(model_48, tmp_path):
    save_pretrained(model_48, tmp_path / "m", preprocess=SAVED)
    model, vis, txt = load_model_and_preprocess("blip2", checkpoint=tmp_path / "m")
    assert model.cfg.image_encoder.image_size == 48
    assert_saved_processors(vis, txt)


def test_a_run_folders_config_gives_the_processors(model_48, tmp_path):
    # what a runner leaves: the full config beside trainable-only best weights
    run = tmp_path / "run"
    run.mkdir()
    cfg = {"model": OmegaConf.to_container(model_48.cfg), "preprocess": SAVED, "run": {"task": "captioning"}}
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    save_weights(run / "model_best.safetensors", model_48.trainable_state_dict(), {"global_step": 3})
    _, vis, txt = load_model_and_preprocess("blip2", checkpoint=run / "model_best.safetensors")
    assert_saved_processors(vis, txt)


def test_without_a_saved_preprocess_block_the_types_processors_follow_the_model(model_48, tmp_path):
    save_pretrained(model_48, tmp_path / "m")
    config = tmp_path / "m" / "config.yaml"
    saved = OmegaConf.load(config)
    saved.pop("preprocess", None)  # a folder written before processors were saved
    config.write_text(OmegaConf.to_yaml(saved))
    _, vis, txt = load_model_and_preprocess("blip2", checkpoint=tmp_path / "m")
    assert vis["eval"](GREY).shape == (3, 48, 48)
    assert txt["eval"]("Two Dogs running in the park!") == "two dogs running in the park"
