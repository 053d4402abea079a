"""Video processors: decord decoding + normalisation, checked against OpenCV-written clips."""
import numpy as np
import pytest
import torch

from lavislike.processors import build_processor

cv2 = pytest.importorskip("cv2")
pytest.importorskip("decord")

MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    """12 frames whose colour encodes the frame index (red channel = 20 * t)."""
    path = tmp_path_factory.mktemp("vid") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (32, 32))
    for t in range(12):
        frame = np.zeros((32, 32, 3), np.uint8)
        frame[:, :, 2] = 20 * t  # BGR: red
        frame[:, :, 1] = 100
        writer.write(frame)
    writer.release()
    return path


def test_eval_uniform_frames_and_normalisation(clip_path):
    proc = build_processor({"name": "alpro_video_eval", "image_size": 16, "n_frms": 4})
    out = proc(clip_path)
    assert out.shape == (4, 3, 16, 16)
    raw = (out * STD + MEAN) * 255  # undo normalisation by hand
    red = raw[:, 0].mean(dim=(1, 2))
    # uniform sampling of 12 frames into 4: indices 0, 3, 6, 9 -> red 0, 60, 120, 180 (mp4v is lossy)
    assert torch.allclose(red, torch.tensor([0.0, 60.0, 120.0, 180.0]), atol=12)
    assert torch.allclose(raw[:, 1].mean(dim=(1, 2)), torch.full((4,), 100.0), atol=10)


def test_train_headtail_and_shapes(clip_path):
    proc = build_processor({"name": "alpro_video_train", "image_size": 16, "n_frms": 4, "rand_augment": False})
    torch.manual_seed(0)
    out = proc(clip_path)
    assert out.shape == (4, 3, 16, 16)
    red = ((out * STD + MEAN) * 255)[:, 0].mean(dim=(1, 2))
    # head-tail: two frames from the first half (red < 120), two from the second
    assert (red[:2] < 115).all() and (red[2:] > 105).all()
    proc_aug = build_processor({"name": "alpro_video_train", "image_size": 16, "n_frms": 4})
    assert proc_aug(clip_path).shape == (4, 3, 16, 16)


def test_short_clip_is_padded(clip_path):
    proc = build_processor({"name": "alpro_video_eval", "image_size": 16, "n_frms": 20})
    out = proc(clip_path)
    assert out.shape == (20, 3, 16, 16)
    torch.testing.assert_close(out[-1], out[11])  # last real frame repeated
