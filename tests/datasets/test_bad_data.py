"""Bad data in a run: corrupt / truncated JPEG, truncated MP4, empty caption, missing file."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lavislike.datasets import base
from lavislike.datasets.bad_data import BadSampleTracker
from lavislike.datasets.sampling import build_dataloader
from lavislike.errors import DataError
from lavislike.processors import build_processor


def _jpeg_bytes(color, size=24):
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    arr = np.clip(rng.normal(128, 60, (size, size, 3)), 0, 255).astype(np.uint8)
    arr[..., 0] = color
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def image_corpus(tmp_path):
    for i in range(6):
        (tmp_path / f"{i}.jpg").write_bytes(_jpeg_bytes(40 * i))
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10)
    good = _jpeg_bytes(200)
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    rows = [{"image": f"{i}.jpg", "caption": f"picture {i}"} for i in range(6)]
    rows += [{"image": "corrupt.jpg", "caption": "c"}, {"image": "truncated.jpg", "caption": "t"},
             {"image": "gone.jpg", "caption": "missing"}, {"image": "0.jpg", "caption": " ... "}]
    (tmp_path / "ann.json").write_text(json.dumps(rows))
    return tmp_path


def _dataset(root, strict=False):
    return base.CaptionDataset(build_processor({"name": "blip_image_eval", "image_size": 8}),
                               build_processor({"name": "blip_caption"}), root, root / "ann.json",
                               strict=strict, name="toy")


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_images_skipped_counted_reported(image_corpus, workers):
    ds = _dataset(image_corpus)
    loader = build_dataloader(ds, batch_size=3, num_workers=workers, is_train=False)
    tracker = BadSampleTracker()
    tracker.add_dataset(ds)  # the caption without a word: dropped when the rows were read
    texts = []
    for batch in loader:
        if tracker.consume(batch):
            texts += batch["text_input"]
            assert batch["image"].shape[0] == len(batch["text_input"])
    assert texts == [f"picture {i}" for i in range(6)]
    stats = tracker.stats()
    assert stats["seen"] == 10 and stats["skipped"] == 4
    report = tracker.end_epoch()
    for name in ("corrupt.jpg", "truncated.jpg", "gone.jpg", "missing file", "empty caption"):
        assert name in report
    assert tracker.stats()["skipped"] == 0 and tracker.total_bad == 4  # new epoch


def test_strict_mode_names_the_file(image_corpus):
    with pytest.raises(DataError, match=r"strict mode: .*ann\.json row 9: empty caption"):
        _dataset(image_corpus, strict=True)
    rows = json.loads((image_corpus / "ann.json").read_text())
    (image_corpus / "ann.json").write_text(json.dumps(rows[:-1]))
    ds = _dataset(image_corpus, strict=True)
    assert ds[0]["text_input"] == "picture 0"
    with pytest.raises(DataError, match=r"strict mode: .*corrupt\.jpg"):
        ds[6]
    loader = build_dataloader(ds, batch_size=4, is_train=False)
    with pytest.raises(DataError, match="corrupt.jpg"):
        list(loader)


def test_limits_stop_the_run(image_corpus):
    loader = build_dataloader(_dataset(image_corpus), batch_size=10, is_train=False)
    with pytest.raises(DataError, match="max_bad_samples=2"):
        BadSampleTracker(max_bad_samples=2).consume(next(iter(loader)))
    tracker = BadSampleTracker(max_bad_fraction=0.3)
    tracker.consume(next(iter(loader)))
    with pytest.raises(DataError, match="max_bad_fraction=0.3"):
        tracker.end_epoch()


def _batch(n_good: int, n_bad: int) -> dict:
    from lavislike.datasets.bad_data import SkippedSample

    batch = {"text_input": ["ok"] * n_good} if n_good else {}
    if n_bad:
        batch["bad_samples"] = [SkippedSample(f"/imgs/{i}.jpg", "missing file", "coco/train", i) for i in range(n_bad)]
    return batch


def test_all_bad_batches_stop_after_a_bound():
    """Without max_bad_samples a corpus whose every sample is bad (a wrong media folder) used
    to be retried forever: the 3rd all-bad batch in a row stops, naming dataset and file."""
    tracker = BadSampleTracker(max_bad_batches_in_row=3)
    assert not tracker.consume(_batch(0, 4)) and not tracker.consume(_batch(0, 4))
    assert tracker.consume(_batch(1, 3))  # a usable sample resets the run of bad batches
    tracker.consume(_batch(0, 4)), tracker.consume(_batch(0, 4))
    with pytest.raises(DataError) as err:
        tracker.consume(_batch(0, 4))
    msg = str(err.value)
    assert "\n" not in msg and "3 batches in a row" in msg
    assert "coco/train: /imgs/0.jpg: missing file" in msg and "23 bad of 24: 23 x coco/train: missing file" in msg


def test_bad_fraction_checked_mid_epoch_after_a_minimum():
    tracker = BadSampleTracker(max_bad_fraction=0.5, min_seen_for_fraction=20)
    for _ in range(4):  # 16 seen, 75% bad: too few to judge yet
        tracker.consume(_batch(1, 3))
    with pytest.raises(DataError, match=r"75.00% of the first 20 samples .*max_bad_fraction=0.5"):
        tracker.consume(_batch(1, 3))
    ok = BadSampleTracker(max_bad_fraction=0.5, min_seen_for_fraction=20)
    for _ in range(10):
        ok.consume(_batch(3, 1))  # 25%: within the limit
    assert ok.stats()["skipped"] == 10


def test_annotation_rows_counted(image_corpus):
    (image_corpus / "ann.json").write_text(json.dumps([{"image": "0.jpg", "caption": "ok"}, {"image": "1.jpg"}]))
    ds = _dataset(image_corpus)
    tracker = BadSampleTracker()
    tracker.add_dataset(ds)
    assert tracker.stats()["reasons"] == {"missing field 'caption'": 1}


def test_truncated_mp4_skipped_and_strict(tmp_path):
    cv2 = pytest.importorskip("cv2")
    pytest.importorskip("decord")
    for name in ("good.mp4", "full.mp4"):
        writer = cv2.VideoWriter(str(tmp_path / name), cv2.VideoWriter_fourcc(*"mp4v"), 8, (32, 32))
        for t in range(8):
            writer.write(np.full((32, 32, 3), 20 * t, np.uint8))
        writer.release()
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    rows = [{"video": "good.mp4", "caption": "a clip"}, {"video": "truncated.mp4", "caption": "cut"}]
    (tmp_path / "ann.json").write_text(json.dumps(rows))
    vis = build_processor({"name": "alpro_video_eval", "image_size": 32, "n_frms": 4})
    txt = build_processor({"name": "blip_caption"})
    ds = base.VideoCaptionDataset(vis, txt, tmp_path, tmp_path / "ann.json", name="vid")
    loader = build_dataloader(ds, batch_size=2, is_train=False)
    batch = next(iter(loader))
    tracker = BadSampleTracker()
    assert tracker.consume(batch)
    assert batch["video"].shape == (1, 4, 3, 32, 32)
    assert "truncated.mp4" in tracker.report() and "corrupt or truncated video" in tracker.report()
    strict = base.VideoCaptionDataset(vis, txt, tmp_path, tmp_path / "ann.json", strict=True)
    with pytest.raises(DataError, match="truncated.mp4"):
        strict[1]
    assert isinstance(torch.as_tensor(strict[0]["video"]), torch.Tensor)
