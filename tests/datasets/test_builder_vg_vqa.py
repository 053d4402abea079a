"""The Visual Genome QA builder (``vg_vqa``) over tiny files in LAVIS's layout: vg_qa.json rows
(question / answer / image) and images under the VG folder's two archive subfolders.

Expected questions are written out by hand from the BLIP question cleaning; expected images
come from a torchvision pipeline applied to the file each row should resolve to.
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
EVAL_AS_TRAIN = {"vis_processor": {"train": {"name": "blip_image_eval", "image_size": 224}}}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LAVISLIKE_CACHE", str(tmp_path))
    return tmp_path


def write_vg_qa(root: Path) -> dict:
    """LAVIS's layout (see ``rf.write_vg_vqa``) with one empty question row."""
    return rf.write_vg_vqa(root, empty_question=True)


def reference_eval(path: Path, size: int = 224) -> torch.Tensor:
    pipe = transforms.Compose([
        transforms.Resize((size, size), interpolation=InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    return pipe(Image.open(path).convert("RGB"))


def one_batch(dataset) -> dict:
    return next(iter(DataLoader(dataset, batch_size=8, collate_fn=collate, num_workers=0)))


def test_vg_vqa_train_rows_questions_answers_and_images(cache):
    exp = write_vg_qa(cache)
    datasets = load_datasets("vg_vqa", EVAL_AS_TRAIN)
    assert set(datasets) == {"train"}
    train = datasets["train"]
    assert len(train) == 3 and len(train.bad_rows) == 1  # the row without a question is dropped
    batch = one_batch(train)
    assert batch["text_input"] == exp["questions"]
    assert batch["text_output"] == exp["answers"]
    assert batch["answers"] == [[a] for a in exp["answers"]]
    assert batch["weights"] == [[1.0]] * 3
    assert batch["n_answers"].tolist() == [1, 1, 1]
    assert batch["question_id"] == exp["question_ids"]
    assert batch["image"].shape == (3, 3, 224, 224)
    for got, name in zip(batch["image"], exp["files"]):
        torch.testing.assert_close(got, reference_eval(cache / "vg/images" / name), atol=1e-5, rtol=0)


def test_vg_vqa_default_train_processor_gives_augmented_224_images(cache):
    write_vg_qa(cache)
    batch = one_batch(load_datasets("vg_vqa")["train"])
    assert batch["image"].shape == (3, 3, 224, 224) and batch["image"].dtype == torch.float32
    assert "bad_samples" not in batch


def test_vg_vqa_missing_annotation_names_file_and_download_command(cache):
    builder = load_builder("vg_vqa")
    builder.media_root().mkdir(parents=True)
    with pytest.raises(DataError) as info:
        builder.build_datasets()
    message = str(info.value)
    assert str(cache / "vg/annotations/vg_qa.json") in message and "lavislike download vg_vqa" in message


def test_vg_vqa_missing_image_is_a_skipped_sample(cache):
    write_vg_qa(cache)
    (cache / "vg/images/VG_100K/1.jpg").unlink()
    batch = one_batch(load_datasets("vg_vqa", EVAL_AS_TRAIN)["train"])
    assert batch["text_input"] == ["where exactly are the clouds?", "what color is the sky?"]
    assert [b.reason for b in batch["bad_samples"]] == ["missing file"]


def test_vg_vqa_download_recipe_reuses_the_vg_image_archives():
    from lavislike.datasets.download import sources

    anns = sources.annotation_resources("vg_vqa")
    assert [(r.url, r.storage) for r in anns] == [
        ("https://storage.googleapis.com/sfr-vision-language-research/LAVIS/datasets/visual_genome/vg_qa.json",
         "vg/annotations/vg_qa.json")]
    assert sources.corpus("vg_vqa").media == sources.corpus("vg_caption").media
    assert {r.url.rsplit("/", 1)[1] for r in sources.corpus("vg_vqa").media} == {"images.zip", "images2.zip"}
    assert load_builder("vg_vqa").media_root() == load_builder("vg_caption").media_root()
    assert (Path(__file__).resolve().parents[2] / sources.corpus("vg_vqa").card).is_file()


def test_vg_vqa_and_vqav2_mix_by_size_in_the_training_stream(cache):
    from lavislike.runners.data import MixedTrainStream, default_sample_ratio

    vqa_exp, vg_exp = rf.write("coco_vqa", cache), write_vg_qa(cache)
    corpora = [(name, load_datasets(name, EVAL_AS_TRAIN)["train"]) for name in ("coco_vqa", "vg_vqa")]
    stream = MixedTrainStream([(n, ds, default_sample_ratio(ds)) for n, ds in corpora], batch_size=1, seed=0,
                              rank=0, world_size=1, num_workers=0, collate_fn=None)
    assert stream.probabilities == pytest.approx({"coco_vqa": 2 / 5, "vg_vqa": 3 / 5})
    questions = {"coco_vqa": set(vqa_exp["train_questions"]), "vg_vqa": set(vg_exp["questions"])}
    for _ in range(12):
        batch = stream.next()
        assert batch["text_input"][0] in questions[stream.last_name]
        assert len(batch["text_output"]) == 1 and batch["image"].shape == (1, 3, 224, 224)
    assert min(stream.picks) > 0
