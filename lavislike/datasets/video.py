"""Reading video frames with decord, or PyAV where decord cannot be installed (both
optional: the ``video`` extra; imported lazily). ``LAVISLIKE_VIDEO_BACKEND=av`` (or
``decord``) forces one.

Frame sampling (LAVIS facts):

* ``uniform``: indices ``arange(0, vlen, vlen / n)`` truncated to int - evenly spaced,
  starting at the first frame.
* ``headtail``: ``n // 2`` sorted random frames from the first half and the rest from the
  second half (LAVIS's train-time sampling).

A clip shorter than ``n_frms`` repeats its last frame so every clip in a batch has the
same length.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from lavislike.datasets.bad_data import BadSampleError

SAMPLINGS = ("uniform", "headtail")
BACKENDS = ("decord", "av")


def frame_indices(vlen: int, n_frms: int, sampling: str = "uniform", generator: torch.Generator | None = None) -> list[int]:
    """Indices of the frames to decode from a video of ``vlen`` frames."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown frame sampling '{sampling}'; use one of {', '.join(SAMPLINGS)}")
    if vlen <= 0:
        return []
    n = min(n_frms, vlen)
    if sampling == "headtail" and vlen >= 2 and n >= 2:
        half = vlen // 2
        n_head = min(n // 2, half)
        n_tail = min(n - n_head, vlen - half)
        head = torch.randperm(half, generator=generator)[:n_head].sort().values
        tail = torch.randperm(vlen - half, generator=generator)[:n_tail].sort().values + half
        idx = torch.cat([head, tail]).tolist()
    else:
        idx = np.arange(0, vlen, vlen / n).astype(int)[:n].tolist()
    return idx + [idx[-1]] * (n_frms - len(idx))


def load_video(
    path: str | os.PathLike,
    n_frms: int,
    height: int | None = None,
    width: int | None = None,
    sampling: str = "uniform",
) -> torch.Tensor:
    """Decode ``n_frms`` frames as a uint8 tensor (T, H, W, 3).

    Args:
        path: video file.
        n_frms: number of frames to return.
        height, width: output size (bilinear, antialiased); None keeps the original size.
        sampling: ``uniform`` or ``headtail``.

    Raises:
        BadSampleError: missing, truncated or undecodable file.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise BadSampleError(path, "missing file")
    frames = _DECODERS[video_backend()](path, n_frms, sampling)
    frames = torch.from_numpy(np.ascontiguousarray(frames))
    if height is not None and width is not None and tuple(frames.shape[1:3]) != (height, width):
        resized = torch.nn.functional.interpolate(
            frames.permute(0, 3, 1, 2).float(), size=(int(height), int(width)), mode="bilinear",
            antialias=True, align_corners=False,
        )
        frames = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return frames


def video_backend() -> str:
    """``$LAVISLIKE_VIDEO_BACKEND``, else decord when importable, else PyAV."""
    from lavislike.errors import ConfigError

    forced = os.environ.get("LAVISLIKE_VIDEO_BACKEND")
    if forced:
        if forced not in BACKENDS:
            raise ConfigError(f"LAVISLIKE_VIDEO_BACKEND={forced}: use one of {', '.join(BACKENDS)}")
        return forced
    for name in BACKENDS:
        try:
            __import__(name)
            return name
        except ImportError:
            continue
    raise ConfigError("reading videos needs decord or PyAV: pip install 'lavislike[video]'")


def _corrupt(path: str, exc: Exception) -> BadSampleError:
    return BadSampleError(path, f"corrupt or truncated video ({str(exc).splitlines()[0][:120]})")


def _decode_decord(path: str, n_frms: int, sampling: str) -> np.ndarray:
    import decord

    try:
        # Resizing inside decord fails for some sizes (16, 24, 48 ...), so torch does it.
        reader = decord.VideoReader(path, num_threads=1)
        vlen = len(reader)
        if vlen == 0:
            raise BadSampleError(path, "video has no frames")
        return reader.get_batch(frame_indices(vlen, n_frms, sampling)).asnumpy()
    except BadSampleError:
        raise
    except (decord.DECORDError, RuntimeError, OSError, ValueError, IndexError) as exc:
        raise _corrupt(path, exc) from None


def _decode_av(path: str, n_frms: int, sampling: str) -> np.ndarray:
    """All frames decoded in order (clips are short; seeking is not frame-exact), then picked."""
    import av

    try:
        with av.open(path) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise _corrupt(path, exc) from None
    if not decoded:
        raise BadSampleError(path, "video has no frames")
    return np.stack([decoded[i] for i in frame_indices(len(decoded), n_frms, sampling)])


_DECODERS = {"decord": _decode_decord, "av": _decode_av}
