"""The own-data builders: the same rows from every layout, rows checked and reported by
file and line, seeded splits by image, column names found or one-line errors."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lavislike.datasets import load_datasets
from lavislike.errors import DataError

EVAL32 = {"train": {"name": "blip_image_eval", "image_size": 32}, "eval": {"name": "blip_image_eval", "image_size": 32}}


def make_images(folder, n, seed=0) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def reference_tensor(path):
    """blip_image_eval at 32 px, written out here: bicubic resize, CLIP mean / std."""
    from torchvision.transforms import functional as F

    img = F.resize(Image.open(path).convert("RGB"), [32, 32], interpolation=F.InterpolationMode.BICUBIC)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    return F.normalize(F.to_tensor(img), mean, std)


def build(kind, **block):
    return load_datasets(kind, {"vis_processor": EVAL32, **block})


@pytest.fixture
def rows(tmp_path):
    names = make_images(tmp_path / "images", 6)
    return [{"image": n, "caption": f"photo number {i}", "image_id": f"id{i // 2}"} for i, n in enumerate(names)]


def test_jsonl_json_and_csv_give_the_same_items(tmp_path, rows):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.json").write_text(json.dumps(rows))
    with open(tmp_path / "a.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "caption", "image_id"])
        w.writeheader()
        w.writerows(rows)
    for name in ("a.jsonl", "a.json", "a.csv"):
        ds = build("own_caption", data=str(tmp_path / name), images=str(tmp_path / "images"), val_ratio=0)["train"]
        assert len(ds) == 6 and not ds.bad_rows, name
        for i, row in enumerate(rows):
            item = ds[i]
            assert item["text_input"] == row["caption"]
            assert item["image_id"] == i // 2  # rows of one image_id share one dense id
            torch.testing.assert_close(item["image"], reference_tensor(tmp_path / "images" / row["image"]))


def test_bad_rows_are_reported_by_file_and_line_and_strict_fails(tmp_path, rows):
    path = tmp_path / "a.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "text"])  # line 1
        w.writerow([rows[0]["image"], "a photo"])  # line 2
        w.writerow([rows[1]["image"], ""])  # line 3: no caption
        w.writerow(["", "no image"])  # line 4: no image
        w.writerow([rows[2]["image"], "another"])  # line 5
    ds = build("own_caption", data=str(path), images=str(tmp_path / "images"), val_ratio=0)["train"]
    assert len(ds) == 2
    assert [(b.path, b.reason) for b in ds.bad_rows] == [
        (f"{path} line 3", "missing field 'caption'"), (f"{path} line 4", "missing field 'image'")]
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(json.dumps(rows[0]) + "\n\n{oops\n" + json.dumps(rows[1]) + "\n")
    ds = build("own_caption", data=str(jsonl), images=str(tmp_path / "images"), val_ratio=0)["train"]
    assert len(ds) == 2 and ds.bad_rows[0].path == f"{jsonl} line 3" and "not valid JSON" in ds.bad_rows[0].reason
    with pytest.raises(DataError, match=f"{path} line 3: missing field 'caption'"):
        build("own_caption", data=str(path), images=str(tmp_path / "images"), val_ratio=0, strict=True)


def test_seeded_split_keeps_each_image_on_one_side(tmp_path):
    names = make_images(tmp_path, 20)
    rows = [{"image": n, "caption": f"caption {k} of {n}"} for n in names for k in range(3)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def split(seed):
        out = build("own_caption", data=str(tmp_path / "a.jsonl"), val_ratio=0.25, split_seed=seed)
        train = {a["image"] for a in out["train"].annotation}
        val = [a for a in out["val"].annotation]
        return train, val

    train, val = split(1)
    val_images = {a["image"] for a in val}
    assert len(val_images) == 5 and not train & val_images and train | val_images == set(names)
    assert all(len(a["caption"]) == 3 for a in val)  # one eval row per image with its 3 captions
    assert split(1)[0] == train and split(2)[0] != train  # the seed decides, nothing else


def test_column_names_usual_aliases_and_wrong_names(tmp_path, rows):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"file_name": r["image"], "query": "what is it?", "answers": ["x", "x", "y"]})
                            + "\n" for r in rows))
    ds = build("own_vqa", data=str(path), images=str(tmp_path / "images"), val_ratio=0)["train"]
    item = ds[0]
    assert item["text_input"] == "what is it?" and item["answers"] == ["x", "y"]
    assert item["weights"] == pytest.approx([2 / 3, 1 / 3]) and item["text_output"] == "x"
    with pytest.raises(DataError) as err:
        build("own_vqa", data=str(path), columns={"question": "querry"})
    assert str(err.value) == (f"{path}: no column 'querry' (datasets.own_vqa.columns.question); it has: "
                              "file_name, query, answers. Did you mean 'query'?")
    with pytest.raises(DataError, match=r"no caption column .* it has: file_name, query, answers"):
        build("own_caption", data=str(path))
    with pytest.raises(DataError, match="unknown field 'captoin'"):
        build("own_caption", data=str(path), columns={"captoin": "query"})


def test_saved_datasets_dataset_gives_the_stored_images(tmp_path):
    datasets = pytest.importorskip("datasets")
    names = make_images(tmp_path / "src", 5)
    images = [Image.open(tmp_path / "src" / n) for n in names]
    ds = datasets.Dataset.from_dict({"picture": images, "text": [f"caption {i}" for i in range(5)]})
    ds.save_to_disk(str(tmp_path / "saved"))
    out = build("own_caption", data=str(tmp_path / "saved"), columns={"image": "picture"}, val_ratio=0.2)
    train, val = out["train"], out["val"]
    assert len(train) == 4 and len(val) == 1
    for i in range(len(train)):
        k = int(train.annotation[i]["_hf_index"])
        assert train[i]["text_input"] == f"caption {k}"
        torch.testing.assert_close(train[i]["image"], reference_tensor(tmp_path / "src" / names[k]))


def test_missing_data_and_unknown_dataset_names_are_one_line(tmp_path):
    from lavislike.errors import ConfigError

    with pytest.raises(ConfigError, match="datasets.own_caption.data is not set"):
        build("own_caption")
    with pytest.raises(DataError, match="data not found"):
        build("own_caption", data=str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="not a file or folder, nor a `datasets` dataset in the local cache"):
        build("own_caption", data="someone/not-cached-anywhere")


def test_videos_with_questions_from_an_imagefolder_style_folder(tmp_path):
    cv2 = pytest.importorskip("cv2")
    pytest.importorskip("decord")
    rows = []
    for i in range(3):
        name = f"clip{i}.mp4"
        writer = cv2.VideoWriter(str(tmp_path / name), cv2.VideoWriter_fourcc(*"mp4v"), 8, (32, 32))
        for _ in range(6):
            writer.write(np.full((32, 32, 3), (0, 0, 80 * i), np.uint8))
        writer.release()
        rows.append({"file_name": name, "question": "what colour?", "answer": f"shade {i}"})
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    vis = {split: {"name": f"alpro_video_{split}", "image_size": 16, "n_frms": 2} for split in ("train", "eval")}
    out = load_datasets("own_vqa", {"data": str(tmp_path), "data_type": "videos", "val_ratio": 0,
                                    "vis_processor": vis})
    ds = out["train"]
    assert len(ds) == 3
    for i in range(3):
        item = ds[i]
        assert item["video"].shape[:2] == (2, 3) and item["text_output"] == f"shade {i}"
    # frame colours follow the clips (red channel 0, 80, 160 before normalisation)
    reds = [ds[i]["video"][:, 0].mean().item() for i in range(3)]
    assert reds[0] < reds[1] < reds[2]


def test_a_wrong_images_folder_fails_at_once(tmp_path, rows):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"none of the first 4 image files .* exist \(e\.g\. .*/elsewhere/im"):
        build("own_caption", data=str(tmp_path / "a.jsonl"), images=str(tmp_path / "elsewhere"))
    ok = build("own_caption", data=str(tmp_path / "a.jsonl"), images=str(tmp_path / "images"))
    # 6 rows of 3 image ids: val_ratio 0.1 holds one image (its 2 rows as one eval item) out
    assert len(ok["train"]) == 4 and len(ok["val"]) == 1


def test_a_datasets_name_from_the_local_cache(tmp_path, monkeypatch, rows):
    """`data: me/pets` with the dataset only in the local cache (offline): its splits and a
    string image column holding paths."""
    import shutil

    datasets = pytest.importorskip("datasets")
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    files = {}
    for split, part in (("train", rows[:4]), ("validation", rows[4:])):
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps({"image": str(tmp_path / "images" / r["image"]),
                                                    "caption": r["caption"]}) + "\n" for r in part))
    datasets.load_dataset("json", data_files={k: str(v) for k, v in files.items()}, cache_dir=str(cache))
    # what a download of `me/pets` leaves in the cache: the prepared arrow files under its name
    built = next((cache / "json").glob("*/*/*"))
    named = cache / "me___pets" / "default" / "0.0.0" / built.name
    shutil.copytree(built, named)
    for f in named.glob("json-*"):
        f.rename(named / f.name.replace("json-", "pets-", 1))
    out = build("own_caption", data="me/pets")
    assert len(out["train"]) == 4 and len(out["val"]) == 2
    assert [out["train"][i]["text_input"] for i in range(4)] == [r["caption"] for r in rows[:4]]
    torch.testing.assert_close(out["train"][1]["image"], reference_tensor(tmp_path / "images" / rows[1]["image"]))
    assert out["val"].annotation[0]["caption"] == [rows[4]["caption"]]
