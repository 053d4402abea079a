"""Frame sampling and video reading (decord, and PyAV where decord is missing)."""
import sys

import numpy as np
import pytest
import torch

from lavislike.datasets.bad_data import BadSampleError
from lavislike.datasets.video import frame_indices, load_video, video_backend


def test_uniform_indices_match_lavis_formula():
    assert frame_indices(12, 4) == [0, 3, 6, 9]
    assert frame_indices(10, 3) == [0, 3, 6]  # arange(0, 10, 10/3) -> 0, 3.33, 6.67
    assert frame_indices(3, 5) == [0, 1, 2, 2, 2]  # short clip: last frame repeated


def test_headtail_halves():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = frame_indices(20, 6, "headtail", generator=g)
        assert len(idx) == 6 and idx[:3] == sorted(idx[:3]) and idx[3:] == sorted(idx[3:])
        assert all(i < 10 for i in idx[:3]) and all(10 <= i < 20 for i in idx[3:])
    assert len(frame_indices(20, 5, "headtail")) == 5
    with pytest.raises(ValueError, match="uniform, headtail"):
        frame_indices(10, 2, "random")


@pytest.mark.parametrize("backend", ["decord", "av"])
def test_load_video_resize_and_missing(tmp_path, monkeypatch, backend):
    cv2 = pytest.importorskip("cv2")
    pytest.importorskip(backend)
    monkeypatch.setenv("LAVISLIKE_VIDEO_BACKEND", backend)
    path = tmp_path / "v.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (40, 32))
    for t in range(6):
        writer.write(np.full((32, 40, 3), (0, 0, 40 * t), np.uint8))
    writer.release()
    frames = load_video(path, 3, height=16, width=24)
    assert frames.shape == (3, 16, 24, 3) and frames.dtype == torch.uint8
    reds = frames[..., 0].float().mean(dim=(1, 2))
    assert torch.allclose(reds, torch.tensor([0.0, 80.0, 160.0]), atol=12)  # frames 0, 2, 4
    assert load_video(path, 2).shape == (2, 32, 40, 3)
    with pytest.raises(BadSampleError, match="missing file"):
        load_video(tmp_path / "nope.mp4", 2)
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    with pytest.raises(BadSampleError, match="corrupt or truncated|no frames"):
        load_video(tmp_path / "bad.mp4", 2)


def test_pyav_is_the_fallback_without_decord(monkeypatch):
    monkeypatch.delenv("LAVISLIKE_VIDEO_BACKEND", raising=False)
    monkeypatch.setitem(sys.modules, "decord", None)  # import decord -> ImportError
    assert video_backend() == "av"
