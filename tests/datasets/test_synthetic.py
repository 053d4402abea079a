"""The synthetic corpus: determinism, statistics, formats, and that it shows what it says."""
import collections
import hashlib
import json
import re

import numpy as np
import pytest
from PIL import Image

from lavislike.datasets import load_datasets
from lavislike.datasets.synthetic import make_synthetic, read_manifest
from lavislike.datasets.synthetic.generate import COLORS, DIRECTIONS

N = dict(n_train=40, n_val=30, n_test=30, image_size=96)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "synthetic"
    make_synthetic(root, seed=3, with_video=True, **N)
    return root


def _load(root, name):
    return json.loads((root / "annotations" / name).read_text())


def _digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic(corpus, tmp_path):
    again = make_synthetic(tmp_path / "again", seed=3, with_video=True, **N)
    assert _digest(corpus) == _digest(tmp_path / "again")
    assert again["counts"]["caption_train"] == 80
    make_synthetic(tmp_path / "other", seed=4, with_video=False, **N)
    other = _digest(tmp_path / "other")
    assert other["annotations/caption_train.json"] != _digest(corpus)["annotations/caption_train.json"]
    assert not any(k.startswith("videos/") for k in other)


def test_captions_nearly_unique(corpus):
    train = _load(corpus, "caption_train.json")
    by_image = collections.defaultdict(list)
    for row in train:
        by_image[row["image_id"]].append(row["caption"])
    assert all(len(c) == 2 and c[0] != c[1] for c in by_image.values())  # varied wording
    evals = _load(corpus, "caption_val.json") + _load(corpus, "caption_test.json")
    firsts = [c[0] for c in by_image.values()] + [r["caption"][0] for r in evals]
    assert len(set(firsts)) / len(firsts) > 0.9
    all_caps = [r["caption"] for r in train] + [c for r in evals for c in r["caption"]]
    assert len(set(all_caps)) / len(all_caps) > 0.9


def test_images_show_the_captioned_colours(corpus):
    for row in _load(corpus, "caption_val.json"):
        pixels = np.asarray(Image.open(corpus / "images" / row["image"]).convert("RGB")).astype(int)
        mentioned = set(re.findall("|".join(COLORS), row["caption"][0]))
        for name, rgb in COLORS.items():
            n = int((np.abs(pixels - np.array(rgb)).sum(-1) < 60).sum())
            if name in mentioned:
                assert n > 60, (row, name, n)
            else:
                assert n < 25, (row, name, n)


def test_vqa_balance_and_formats(corpus):
    rows = _load(corpus, "vqa_train.json") + _load(corpus, "vqa_val.json") + _load(corpus, "vqa_test.json")
    types = collections.Counter(r["question_type"] for r in rows)
    assert set(types) == {"color", "shape", "count", "position", "yes/no"}
    yn = [r["answer"][0] for r in rows if r["question_type"] == "yes/no"]
    assert 0.35 < yn.count("yes") / len(yn) < 0.65
    colors = collections.Counter(r["answer"][0] for r in rows if r["question_type"] == "color")
    assert set(colors) == set(COLORS)
    assert max(colors.values()) / min(colors.values()) < 3.0
    assert all(len(r["answer"]) == 10 for r in rows)
    assert len({r["question_id"] for r in rows}) == len(rows)
    qs = _load(corpus, "vqa_val_questions.json")["questions"]
    anns = _load(corpus, "vqa_val_annotations.json")["annotations"]
    val = _load(corpus, "vqa_val.json")
    assert [q["question_id"] for q in qs] == [a["question_id"] for a in anns] == [r["question_id"] for r in val]
    assert [a["answers"][0]["answer"] for a in anns] == [r["answer"][0] for r in val]


def test_coco_ground_truth_loads(corpus):
    pycocotools = pytest.importorskip("pycocotools.coco")
    coco = pycocotools.COCO(str(corpus / "annotations" / "caption_val_gt.json"))
    rows = _load(corpus, "caption_val.json")
    assert sorted(coco.getImgIds()) == sorted(r["image_id"] for r in rows)
    res = coco.loadRes([{"image_id": r["image_id"], "caption": "a shape"} for r in rows])
    assert len(res.getImgIds()) == len(rows)
    assert len(coco.anns) == sum(len(r["caption"]) for r in rows)


def test_videos_move_as_captioned(corpus):
    decord = pytest.importorskip("decord")
    for row in _load(corpus, "video_caption_val.json")[:8]:
        frames = decord.VideoReader(str(corpus / "videos" / row["video"])).get_batch([0, 15]).asnumpy().astype(int)
        assert len(decord.VideoReader(str(corpus / "videos" / row["video"]))) == 16
        centroids = []
        for f in frames:
            bg = np.median(f.reshape(-1, 3), axis=0)
            ys, xs = np.nonzero(np.abs(f - bg).sum(-1) > 80)
            centroids.append((xs.mean(), ys.mean()))
        dx, dy = np.subtract(centroids[1], centroids[0])
        direction = re.search(r"moving (\w+)", row["caption"][1]).group(1)
        ex, ey = DIRECTIONS[direction]
        assert dx * ex + dy * ey > 20, (row, dx, dy)


def test_builders_generate_once(tmp_path, monkeypatch):
    monkeypatch.setenv("LAVISLIKE_CACHE", str(tmp_path))
    small = {"n_train": 6, "n_val": 4, "n_test": 4, "image_size": 32, "with_video": True}
    ds = load_datasets("synthetic_caption", small)
    assert len(ds["train"]) == 12 and len(ds["val"]) == 4
    assert ds["val"].eval_files["coco_gt"].is_file()
    manifest = tmp_path / "synthetic" / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    vqa = load_datasets("synthetic_vqa")  # null options accept the existing corpus
    assert manifest.stat().st_mtime_ns == stamp
    item = vqa["train"][0]
    assert item["image"].shape == (3, 224, 224) and item["text_input"].endswith("?")
    assert set(vqa["val"].eval_files) == {"vqa_questions", "vqa_annotations"}
    ret = load_datasets("synthetic_retrieval")
    assert len(ret["test"].text) == 8 and ret["test"].img2txt[0] == [0, 1]
    vid = load_datasets("synthetic_video_qa", {"vis_processor": {"eval": {"name": "alpro_video_eval", "image_size": 32, "n_frms": 4}}})
    assert vid["val"][0]["video"].shape == (4, 3, 32, 32)
    assert read_manifest(tmp_path / "synthetic")["params"]["n_train"] == 6
    load_datasets("synthetic_caption", {"n_train": 7})  # a different set option regenerates
    assert read_manifest(tmp_path / "synthetic")["params"]["n_train"] == 7
