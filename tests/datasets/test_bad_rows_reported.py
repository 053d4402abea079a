"""Every bad row of a training run is reported by annotation file and the file's own row:
an empty caption, a row missing a field, a corrupt JPEG and a truncated MP4, through the
real runner (its log) and through strict mode."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lavislike.datasets import base
from lavislike.datasets.collate import collate
from lavislike.errors import DataError
from lavislike.processors import build_processor

sys.path.insert(0, str(Path(__file__).parents[1] / "runners"))
from toy_parts import make_runner  # noqa: E402


class MeanModel(nn.Module):
    """Loss from the mean of each image / video: enough to drive the runner."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, samples: dict) -> dict:
        x = samples["image"] if "image" in samples else samples["video"]
        loss = ((x.flatten(1).mean(1) * self.w - 1) ** 2).mean()
        return {"loss": loss}


def _jpeg(path: Path, value: int) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue())


def _mp4(path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (32, 32))
    for t in range(8):
        writer.write(np.full((32, 32, 3), 20 * t, np.uint8))
    writer.release()


@pytest.fixture
def image_data(tmp_path) -> tuple[Path, Path]:
    for i in range(4):
        _jpeg(tmp_path / f"{i}.jpg", 50 * i)
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all" * 8)
    rows = [{"image": "0.jpg", "caption": "a grey square"}, {"image": "1.jpg", "caption": "another one"},
            {"image": "2.jpg", "caption": " .. "},  # row 2: no word
            {"image": "3.jpg"},  # row 3: no caption
            {"image": "corrupt.jpg", "caption": "broken"},  # row 4
            {"image": "3.jpg", "caption": "the last one"}]
    ann = tmp_path / "captions.json"
    ann.write_text(json.dumps(rows))
    return tmp_path, ann


@pytest.fixture
def video_data(tmp_path) -> tuple[Path, Path]:
    pytest.importorskip("decord")
    _mp4(tmp_path / "good.mp4")
    _mp4(tmp_path / "full.mp4")
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    ann = tmp_path / "clips.jsonl"
    ann.write_text("\n".join(json.dumps(r) for r in [
        {"video": "good.mp4", "caption": "a clip"}, {"video": "truncated.mp4", "caption": "cut short"},
        {"video": "good.mp4", "caption": "again"}, {"video": "good.mp4", "caption": "once more"}]) + "\n")
    return tmp_path, ann


def _images(root, ann, strict=False):
    return base.CaptionDataset(build_processor({"name": "blip_image_eval", "image_size": 8}),
                               build_processor({"name": "blip_caption"}), root, ann, strict=strict, name="imgs")


def _videos(root, ann, strict=False):
    return base.VideoCaptionDataset(build_processor({"name": "alpro_video_eval", "image_size": 16, "n_frms": 2}),
                                    build_processor({"name": "blip_caption"}), root, ann, strict=strict, name="clips")


def _train_log(out: Path, dataset) -> str:
    runner = make_runner(out, model=MeanModel(), datasets={dataset.name: {"train": dataset}}, collate_fn=collate,
                         max_epoch=1, batch_size_train=2, warmup_steps=0)
    runner.train()
    return (out / "log.txt").read_text()


def test_image_rows_reported_by_file_and_row(image_data, tmp_path):
    root, ann = image_data
    log = _train_log(tmp_path / "run", _images(root, ann))
    assert f"{ann} row 2: empty caption ' .. '" in log
    assert f"{ann} row 3: missing field 'caption'" in log
    assert f"corrupt.jpg (from {ann} row 4): " in log
    assert "3 of 6" in log  # the epoch report counts the dropped rows with the skipped image


def test_truncated_video_reported_by_file_and_line(video_data, tmp_path):
    root, ann = video_data
    log = _train_log(tmp_path / "run", _videos(root, ann))
    assert f"truncated.mp4 (from {ann} line 2): corrupt or truncated video" in log


def test_strict_mode_names_file_and_row(image_data, video_data):
    with pytest.raises(DataError, match=rf"{image_data[1]} row 2: empty caption"):
        _images(*image_data, strict=True)
    ds = _videos(*video_data, strict=True)
    with pytest.raises(DataError, match=rf"truncated\.mp4 \(from {video_data[1]} line 2\)"):
        ds[1]
