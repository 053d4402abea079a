"""The frozen-feature cache: ``lavislike cache-features`` + ``datasets.<name>.feature_cache``.

The reference is the same model reading the images: a stage-2 loss from an fp32 cache equals
it to float noise, from an fp16 cache within 1e-2 relative (fp16 keeps 11 significant bits).
Not bit for bit: the cache encodes each distinct image once, in batches of its own making, and
on some CPUs (AVX2 MKL) the encoder's last bits depend on which images share a batch.
"""
from __future__ import annotations

import copy

import pytest
import torch
import yaml
from omegaconf import OmegaConf, open_dict

from lavislike.cli import main as cli_main
from lavislike.config import load_config
from lavislike.datasets.collate import collate
from lavislike.datasets.feature_cache import cache_features, verify_feature_caches
from lavislike.errors import ConfigError, DataError
from lavislike.runners.launch import seed_everything
from lavislike.tasks import setup_task

N_TRAIN = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from lavislike.datasets.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("cache")
    make_synthetic(root / "synthetic", seed=0, n_train=N_TRAIN, n_val=4, n_test=4, image_size=32, with_video=False)
    return root


def write_config(tmp_path, corpus, monkeypatch, train_processor="blip_image_eval", **run) -> str:
    monkeypatch.setenv("LAVISLIKE_CACHE", str(corpus))
    cfg = {
        "model": {"arch": "blip2_opt", "model_type": "tiny"},
        "datasets": {"synthetic_caption": {
            "seed": 0, "n_train": N_TRAIN, "n_val": 4, "n_test": 4, "image_size": 32, "with_video": False,
            "feature_cache": str(tmp_path / "features"),
            "vis_processor": {"train": {"name": train_processor, "image_size": 32},
                              "eval": {"name": "blip_image_eval", "image_size": 32}}}},
        "run": {"task": "image_text_pretrain", "runner": "runner_base", "max_epoch": 1, "batch_size_train": 4,
                "batch_size_eval": 4, "init_lr": 1e-3, "output_dir": str(tmp_path / "out"), "device": "cpu",
                "progress_bar": False, "tensorboard": False, "seed": 7, **run},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def build(cfg, cached: bool):
    if not cached:
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.datasets.synthetic_caption.feature_cache = None
    seed_everything(int(cfg.run.seed))  # the model cache-features built
    task = setup_task(cfg)
    return task.build_model(cfg).eval(), task.build_datasets(cfg)


def spread_(model) -> None:
    """Wider random weights after the encoder: the tiny model's default init makes the
    LLM's loss ignore the image (ln(vocab) whatever it sees)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 and not name.startswith("image_encoder."):
                p.normal_(0, 0.3)


def outputs(model, datasets, n=4) -> tuple[torch.Tensor, torch.Tensor]:
    """The image features the Q-Former reads and the stage-2 loss, on the first ``n`` items."""
    train = datasets["synthetic_caption"]["train"]
    batch = collate([train[i] for i in range(n)])
    with torch.no_grad():
        return model.image_embeds(batch), model(batch)["loss"]


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_loss_from_cache_matches_loss_from_images(tmp_path, corpus, monkeypatch, dtype):
    cfg = load_config(write_config(tmp_path, corpus, monkeypatch), [])
    written = cache_features(cfg, dtype=dtype)
    assert set(written) == {"synthetic_caption/train", "synthetic_caption/val", "synthetic_caption/test"}
    model, from_images = build(cfg, cached=False)
    _, from_cache = build(cfg, cached=True)
    item = from_cache["synthetic_caption"]["train"][0]
    assert "image" not in item and item["image_features"].shape[-1] == model.image_encoder.num_features
    verify_feature_caches(model, from_cache)  # the same encoder, weights and processor
    spread_(model)
    (ref_embeds, ref), (got_embeds, got) = outputs(model, from_images), outputs(model, from_cache)
    if dtype == "fp32":
        torch.testing.assert_close(got_embeds, ref_embeds, rtol=0, atol=1e-5)
        assert got.item() == pytest.approx(ref.item(), rel=1e-6)
        # evaluation reads the cache too: the same captions as from the images
        val_img, val_cache = (d["synthetic_caption"]["val"] for d in (from_images, from_cache))
        gen = dict(num_beams=2, max_length=6, min_length=2)
        assert (model.generate(collate([val_cache[i] for i in range(2)]), **gen)
                == model.generate(collate([val_img[i] for i in range(2)]), **gen))
    else:
        rel = ((got_embeds - ref_embeds).norm() / ref_embeds.norm()).item()
        assert 0 < rel < 2e-3
        assert got.item() == pytest.approx(ref.item(), rel=1e-2)
    images_only = from_images["synthetic_caption"]["train"][4]["image"]  # a loss that depends on the image
    blank = collate([{**from_images["synthetic_caption"]["train"][i], "image": torch.zeros_like(images_only)}
                     for i in range(4)])
    with torch.no_grad():
        assert abs(model(blank)["loss"].item() - ref.item()) > 1e-3


def test_changed_encoder_invalidates_the_cache(tmp_path, corpus, monkeypatch):
    cfg = load_config(write_config(tmp_path, corpus, monkeypatch), [])
    cache_features(cfg)
    model, datasets = build(cfg, cached=True)
    with torch.no_grad():
        model.image_encoder.blocks[0].mlp.fc1.weight[0, 0] += 1e-3
    with pytest.raises(DataError, match=r"stale: the image encoder weights changed.*cache-features"):
        verify_feature_caches(model, datasets)
    other = load_config(write_config(tmp_path, corpus, monkeypatch), ["model.image_encoder.drop_path_rate=0.1"])
    model, datasets = build(other, cached=True)
    with pytest.raises(DataError, match=r"stale: the image encoder config changed"):
        verify_feature_caches(model, datasets)


def test_training_reads_features_not_images(tmp_path, corpus, monkeypatch, capsys):
    path = write_config(tmp_path, corpus, monkeypatch, log_freq=1)
    assert cli_main(["cache-features", "--cfg-path", path, "--dtype", "fp16"]) == 0
    assert "synthetic_caption/train:" in capsys.readouterr().out
    from lavislike.runners.launch import run

    def no_images(path):
        raise AssertionError(f"an image was decoded: {path}")

    monkeypatch.setattr("lavislike.datasets.base.load_image", no_images)
    summary = run(load_config(path, []))
    assert summary["global_step"] == 4  # 16 training captions (2 per image), batch 4


def test_random_augmentation_is_refused(tmp_path, corpus, monkeypatch, capsys):
    path = write_config(tmp_path, corpus, monkeypatch, train_processor="blip2_image_train")
    assert cli_main(["cache-features", "--cfg-path", path]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "datasets.synthetic_caption.feature_cache (train)" in err and "random augmentation" in err
    with pytest.raises(ConfigError, match="random augmentation"):
        setup_task(load_config(path, [])).build_datasets(load_config(path, []))


def test_features_outside_fp16_range_are_refused(tmp_path):
    from lavislike.datasets.feature_cache import write_cache

    tiny = torch.full((2, 3, 4), 1e-9)
    with pytest.raises(DataError, match="do not fit fp16.*use --dtype bf16"):
        write_cache(tmp_path / "c", ["a", "b"], [tiny], [], {}, "fp16")
    cache = write_cache(tmp_path / "c", ["a", "b"], [tiny], [], {}, "bf16")
    assert cache.features("b").float().allclose(tiny[1], rtol=1e-2)


def test_own_data_from_a_datasets_dataset_is_cached(tmp_path):
    """Images stored inside a ``datasets`` dataset (own_caption): cached and read back."""
    datasets = pytest.importorskip("datasets")
    import numpy as np
    from PIL import Image
    from torch import nn

    from lavislike.datasets import load_datasets
    from lavislike.datasets.feature_cache import attach_feature_cache, encode_dataset, write_cache
    from lavislike.registry import IMAGE_ENCODERS

    rng = np.random.default_rng(0)
    pics = [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(3)]
    datasets.Dataset.from_dict({"image": pics, "text": ["a", "b", "c"]}).save_to_disk(str(tmp_path / "saved"))
    eval32 = {"name": "blip_image_eval", "image_size": 32}
    train = load_datasets("own_caption", {"data": str(tmp_path / "saved"), "val_ratio": 0,
                                          "vis_processor": {"train": eval32, "eval": eval32}})["train"]
    model = nn.Module()
    model.image_encoder = IMAGE_ENCODERS.get("eva_vit_tiny").from_config({"name": "eva_vit_tiny"})
    model.cfg = OmegaConf.create({"image_encoder": {"name": "eva_vit_tiny", "image_size": 32}})
    keys, batches, bad = encode_dataset(model, train, batch_size=2)
    write_cache(tmp_path / "fc", keys, batches, bad, {}, "fp32")
    expected = [train[i]["image"] for i in range(len(train))]
    attach_feature_cache(train, tmp_path / "fc", "own_caption")
    with torch.no_grad():
        for i, image in enumerate(expected):
            # encoded two at a time there, one at a time here: equal to float noise (module doc)
            torch.testing.assert_close(train[i]["image_features"], model.image_encoder(image[None])[0],
                                       rtol=0, atol=1e-5)
    # the own_* builders attach it from the block's feature_cache (<folder>/<split>) as the others do
    import shutil

    shutil.copytree(tmp_path / "fc", tmp_path / "cached" / "train")
    via_config = load_datasets("own_caption", {"data": str(tmp_path / "saved"), "val_ratio": 0,
                                               "feature_cache": str(tmp_path / "cached"),
                                               "vis_processor": {"train": eval32, "eval": eval32}})["train"]
    for i in range(len(expected)):
        item = via_config[i]
        assert "image" not in item and torch.equal(item["image_features"], train[i]["image_features"])
