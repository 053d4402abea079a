"""Dataset classes over tiny hand-written LAVIS-format files."""
import json

import pytest
import torch
from PIL import Image

from lavislike.datasets import base
from lavislike.errors import DataError
from lavislike.processors import build_processor


@pytest.fixture
def root(tmp_path):
    for i, color in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (20, 20), color).save(tmp_path / f"{i}.jpg")
    return tmp_path


def _write(path, rows):
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture
def procs():
    return build_processor({"name": "blip_image_eval", "image_size": 8}), build_processor({"name": "blip_caption"})


def test_caption_train_dense_image_ids(root, procs):
    ann = _write(root / "train.json", [
        {"image": "0.jpg", "caption": "A red Square.", "image_id": "coco_7"},
        {"image": "1.jpg", "caption": "green", "image_id": "coco_3"},
        {"image": "0.jpg", "caption": "red again", "image_id": "coco_7"},
    ])
    ds = base.CaptionDataset(*procs, root, ann)
    items = [ds[i] for i in range(3)]
    assert [it["image_id"] for it in items] == [0, 1, 0]
    assert items[0]["text_input"] == "a red square"
    assert items[0]["image"].shape == (3, 8, 8)
    # the red image really is red after undoing the normalisation
    assert items[0]["image"][0].mean() > items[0]["image"][1].mean()


def test_jsonl_and_multiple_files_concatenate(root, procs):
    a = _write(root / "a.json", {"annotations": [{"image": "0.jpg", "caption": "x"}]})
    b = root / "b.jsonl"
    b.write_text('{"image": "1.jpg", "caption": "y"}\n\n{"image": "2.jpg", "caption": "z"}\n')
    ds = base.CaptionDataset(*procs, root, [a, b])
    assert len(ds) == 3 and [ds[i]["text_input"] for i in range(3)] == ["x", "y", "z"]
    assert [ds[i]["image_id"] for i in range(3)] == [0, 1, 2]  # no image_id: keyed by path


def test_caption_eval_ids(root, procs):
    ann = _write(root / "val.json", [{"image": "0.jpg", "caption": ["a", "b"], "image_id": "42"},
                                     {"image": "1.jpg", "caption": ["c"], "image_id": 5}])
    ds = base.CaptionEvalDataset(*procs, root, ann)
    assert [(ds[i]["image_id"], ds[i]["instance_id"]) for i in range(2)] == [(42, "0"), (5, "1")]


def test_retrieval_eval_maps(root, procs):
    ann = _write(root / "test.json", [
        {"image": "0.jpg", "caption": ["First one.", "second ONE"]},
        {"image": "1.jpg", "caption": ["third"]},
        {"image": "2.jpg", "caption": ["fourth", "fifth", "sixth"]},
    ])
    ds = base.RetrievalEvalDataset(*procs, root, ann)
    assert ds.text == ["first one", "second one", "third", "fourth", "fifth", "sixth"]
    assert ds.img2txt == {0: [0, 1], 1: [2], 2: [3, 4, 5]}
    assert ds.txt2img == {0: 0, 1: 0, 2: 1, 3: 2, 4: 2, 5: 2}
    assert ds.image == ["0.jpg", "1.jpg", "2.jpg"]
    item = ds[2]
    assert item["index"] == 2 and item["image"].shape == (3, 8, 8)


def test_vqa_answers_and_weights(root, procs):
    q = build_processor({"name": "blip_question"})
    ann = _write(root / "vqa.json", [
        {"image": "0.jpg", "question": "What color?", "answer": ["red", "red", "maroon", "red"], "question_id": 9},
        {"image": "1.jpg", "question": "Is it green?", "answer": "yes"},
    ])
    ds = base.VQADataset(procs[0], q, root, ann)
    item = ds[0]
    assert item["text_input"] == "what color?"
    assert item["answers"] == ["red", "maroon"]
    assert item["weights"] == [0.75, 0.25]
    assert item["text_output"] == "red" and item["question_id"] == 9
    assert ds[1]["answers"] == ["yes"] and ds[1]["weights"] == [1.0]
    ev = base.VQAEvalDataset(procs[0], q, root, ann)
    assert ev[0]["question_id"] == 9 and ev[0]["instance_id"] == "0"


def test_missing_field_rows_dropped_and_recorded(root, procs):
    ann = _write(root / "bad.json", [
        {"image": "0.jpg", "caption": "fine"},
        {"image": "1.jpg"},
        {"caption": "no image"},
        {"image": "2.jpg", "caption": ""},
    ])
    ds = base.CaptionDataset(*procs, root, ann, name="demo")
    assert len(ds) == 1
    assert [b.reason for b in ds.bad_rows] == ["missing field 'caption'", "missing field 'image'", "empty caption ''"]
    assert "bad.json row 1" in ds.bad_rows[0].path
    with pytest.raises(DataError, match=r"bad\.json row 1.*missing field 'caption'"):
        base.CaptionDataset(*procs, root, ann, strict=True)


def test_missing_annotation_file_is_clear(root, procs):
    with pytest.raises(DataError, match="annotation file not found: .*nope.json"):
        base.CaptionDataset(*procs, root, root / "nope.json")
    (root / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="broken.json is not valid JSON"):
        base.CaptionDataset(*procs, root, root / "broken.json")


def test_collater_is_collate(root, procs):
    ann = _write(root / "t.json", [{"image": f"{i}.jpg", "caption": f"c {i}"} for i in range(3)])
    ds = base.CaptionDataset(*procs, root, ann)
    batch = ds.collater([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 8, 8) and batch["image_id"].dtype == torch.long
