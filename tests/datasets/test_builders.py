"""Every real-corpus builder, built from its default YAML over tiny files in the real
annotation formats (tests/datasets/fixtures/real_formats.py), batched through collate.

Expected texts are written out by hand from the BLIP cleaning rules; expected eval images
come from a torchvision pipeline built here, applied to the fixture file of each row.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from fixtures import real_formats as rf
from lavislike.datasets.builder import load_builder, load_datasets
from lavislike.datasets.collate import collate
from lavislike.errors import DataError

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LAVISLIKE_CACHE", str(tmp_path))
    return tmp_path


def one_batch(dataset, size=16) -> dict:
    return next(iter(DataLoader(dataset, batch_size=size, collate_fn=collate, num_workers=0)))


def reference_eval(path: Path, size: int) -> torch.Tensor:
    pipe = transforms.Compose([
        transforms.Resize((size, size), interpolation=InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    return pipe(Image.open(path).convert("RGB"))


def assert_eval_images(batch, media_root: Path, names: list[str], size: int) -> None:
    assert batch["image"].shape == (len(names), 3, size, size)
    for got, name in zip(batch["image"], names):
        torch.testing.assert_close(got, reference_eval(media_root / name, size), atol=1e-5, rtol=0)


# -- captions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["coco_caption", "vg_caption", "sbu_caption",
                                  "conceptual_caption_3m", "conceptual_caption_12m"])
def test_caption_train_split(cache, name):
    exp = rf.write(name, cache)
    datasets = load_datasets(name)
    batch = one_batch(datasets["train"])
    n = len(exp["train_text"])
    assert batch["image"].shape == (n, 3, 224, 224) and batch["image"].dtype == torch.float32
    assert batch["text_input"] == exp["train_text"]
    assert batch["image_id"].dtype == torch.long and len(batch["image_id"]) == n
    if "train_image_id" in exp:  # captions of one image share its dense id
        assert batch["image_id"].tolist() == exp["train_image_id"]
    assert "bad_samples" not in batch


def test_coco_caption_eval_splits(cache):
    exp = rf.write("coco_caption", cache)
    datasets = load_datasets("coco_caption")
    assert set(datasets) == {"train", "val", "test"}
    for split in ("val", "test"):
        batch = one_batch(datasets[split])
        assert_eval_images(batch, exp["media_root"], exp["eval_images"][split], 224)
        assert batch["image_id"].tolist() == exp["eval_image_id"][split]  # ids from the file names
        assert batch["instance_id"] == [str(i) for i in range(len(exp["eval_images"][split]))]
        assert [Path(p).name for p in datasets[split].gt_files] == [f"coco_karpathy_{split}_gt.json"]
        assert len(datasets[split]) == len(exp["eval_images"][split])  # the gt file is not read as rows


def test_nocaps_eval_splits(cache):
    exp = rf.write("nocaps", cache)
    datasets = load_datasets("nocaps")
    assert set(datasets) == {"val", "test"}
    for split in ("val", "test"):
        batch = one_batch(datasets[split])
        assert_eval_images(batch, exp["media_root"], exp["eval_images"][split], 224)
        assert batch["image_id"].tolist() == exp["eval_image_id"][split]


def test_vg_bare_file_names_found_in_vg_100k(cache):
    rf.write("vg_caption", cache)
    item = load_datasets("vg_caption")["train"][0]
    assert isinstance(item, dict) and item["text_input"] == "clock mounted on a pole"


# -- retrieval ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["coco_retrieval", "flickr30k"])
def test_retrieval_splits(cache, name):
    exp = rf.write(name, cache)
    datasets = load_datasets(name)
    train = one_batch(datasets["train"])
    assert train["image"].shape[1:] == (3, 364, 364)
    assert train["text_input"] == exp["train_text"]
    assert train["image_id"].tolist() == exp["train_image_id"]
    test = datasets["test"]
    assert test.text == exp["test_text"]
    assert test.txt2img == exp["test_txt2img"]
    assert test.img2txt == {i: [t for t, img in exp["test_txt2img"].items() if img == i]
                            for i in range(len(exp["eval_images"]["test"]))}
    batch = one_batch(test)
    assert_eval_images(batch, exp["media_root"], exp["eval_images"]["test"], 364)
    assert batch["index"].tolist() == list(range(len(exp["eval_images"]["test"])))


# -- VQA ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["coco_vqa", "ok_vqa", "gqa"])
def test_vqa_splits(cache, name):
    exp = rf.write(name, cache)
    datasets = load_datasets(name)
    train = one_batch(datasets["train"])
    assert train["text_input"] == exp["train_questions"]
    assert train["text_output"] == exp["train_best"]
    assert train["n_answers"].tolist() == [len(a) for a in train["answers"]]
    if "train_weights" in exp:
        assert train["answers"] == exp["train_answers"]
        for got, want in zip(train["weights"], exp["train_weights"]):
            assert got == pytest.approx(want)
    for split, names in exp["eval_images"].items():
        ds = datasets[split]
        batch = one_batch(ds)
        assert_eval_images(batch, exp["media_root"], names, 224)
        assert len(ds) == len(names)  # answer lists / official files are not rows
        if "answer_list" in exp:
            assert ds.answer_list == exp["answer_list"]


def test_coco_vqa_val_keeps_official_files(cache):
    rf.write("coco_vqa", cache)
    val = load_datasets("coco_vqa")["val"]
    assert Path(val.ques_files[0]).name == "v2_OpenEnded_mscoco_val2014_questions.json"
    assert Path(val.anno_files[0]).name == "v2_mscoco_val2014_annotations.json"
    assert val.coco_fmt_anno_file == val.anno_files[0]
    batch = one_batch(val)
    assert batch["question_id"] == [73000]
    assert batch["answers"] == [["cat", "kitten"]]
    assert batch["weights"][0] == pytest.approx([0.9, 0.1])


def test_gqa_balanced_val_type(cache):
    builder = load_builder("gqa", {"type": "balanced_val"})
    assert builder.annotation_paths("val")[0].name == "val_balanced_questions.json"
    assert load_builder("gqa").annotation_paths("val")[0].name == "testdev_balanced_questions.json"


# -- video -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["msrvtt_caption", "msrvtt_qa", "msvd_qa"])
def test_video_splits(cache, name):
    exp = rf.write(name, cache)
    datasets = load_datasets(name)
    assert set(datasets) == {"train", "val", "test"}
    train = one_batch(datasets["train"])
    assert train["video"].shape == (1, 8, 3, 224, 224)
    assert "bad_samples" not in train
    if "train_text" in exp:
        assert train["text_input"] == exp["train_text"]
    else:
        assert train["text_input"] == exp["train_questions"]
        assert train["text_output"] == exp["train_best"]
        assert datasets["test"].class_labels == exp["class_labels"]
    for split in ("val", "test"):
        batch = one_batch(datasets[split])
        assert batch["video"].shape == (1, 8, 3, 224, 224)
        if "eval_image_id" in exp:
            assert batch["image_id"].tolist() == exp["eval_image_id"][split]


# -- LAION webdataset --------------------------------------------------------------------------
def test_laion_stream_picks_capfilt_captions_and_skips_corrupt(cache, caplog):
    exp = rf.write_laion(cache)
    with caplog.at_level("WARNING"):
        ds = load_datasets("laion")["train"]  # default YAML names 100 shards; 2 exist
    assert "98 of 100 shards missing" in caplog.text
    allowed = {c for caps in exp["captions"].values() for c in caps}
    seen, bad = [], []
    for batch in DataLoader(ds, batch_size=4, collate_fn=collate, num_workers=0):
        seen += batch.get("text_input", [])
        bad += batch.get("bad_samples", [])
        if "image" in batch:
            assert batch["image"].shape[1:] == (3, 224, 224)
        if len(seen) >= 40:
            break
    assert set(seen) <= allowed
    # one of the two kept captions is drawn per sample: both variants show up
    assert any(c.startswith("a photo of") for c in seen) and any(c.endswith("on a table") for c in seen)
    assert bad and all(exp["corrupt_key"] in b.path and "corrupt" in b.reason for b in bad)


def test_laion_single_pass_and_epoch_length(cache):
    exp = rf.write_laion(cache)
    one_pass = list(load_datasets("laion", {"resampled": False, "shuffle_buffer": 0})["train"])
    good = [it for it in one_pass if isinstance(it, dict)]
    assert len(one_pass) == 6 and len(good) == 5
    assert len(list(load_datasets("laion", {"samples_per_epoch": 7})["train"])) == 7
    strict = load_datasets("laion", {"resampled": False, "shuffle_buffer": 0, "strict": True})["train"]
    with pytest.raises(DataError, match=exp["corrupt_key"]):
        list(strict)


def test_laion_without_shards_says_how_to_get_them(cache):
    with pytest.raises(DataError, match=r"no shard found.*lavislike download laion --how"):
        load_datasets("laion")


# -- missing files -----------------------------------------------------------------------------
REAL = ["coco_caption", "coco_retrieval", "flickr30k", "coco_vqa", "ok_vqa", "gqa", "nocaps", "vg_caption",
        "conceptual_caption_3m", "conceptual_caption_12m", "sbu_caption", "msrvtt_caption", "msrvtt_qa", "msvd_qa"]


@pytest.mark.parametrize("name", REAL)
def test_missing_annotation_file_names_file_and_download_command(cache, name):
    builder = load_builder(name)
    builder.media_root().mkdir(parents=True)
    first = builder.annotation_paths(builder.splits()[0])[0]
    with pytest.raises(DataError) as info:
        builder.build_datasets()
    message = str(info.value)
    assert str(first) in message and f"lavislike download {name}" in message
    assert "\n" not in message
