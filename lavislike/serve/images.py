"""Reading uploaded images: anything that is not a readable image, or is too large, is a
one-line :class:`UploadError` the page shows (the server keeps running)."""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from lavislike.errors import DataError

MAX_UPLOAD_MB = 20
MAX_PIXELS = 40_000_000  # about 6300 x 6300; PIL's own bomb check allows twice this


class UploadError(DataError):
    """An upload the app cannot use."""


def read_image(path: str | os.PathLike | None, max_mb: float = MAX_UPLOAD_MB,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The RGB image at ``path``.

    Raises:
        UploadError: nothing uploaded, a file over ``max_mb`` or ``max_pixels``, or a file
            PIL cannot read as an image.
    """
    if path is None or str(path) == "":
        raise UploadError("upload an image first")
    path = Path(path)
    if not path.is_file():
        raise UploadError(f"{path.name}: not a file")
    size_mb = path.stat().st_size / 2**20
    if size_mb > max_mb:
        raise UploadError(f"{path.name}: {size_mb:.1f} MB is over the {max_mb:g} MB upload limit")
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                raise UploadError(f"{path.name}: {img.width}x{img.height} pixels is over the "
                                  f"{max_pixels:,} pixel limit")
            return img.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as exc:
        raise UploadError(f"{path.name}: not an image this app can read ({type(exc).__name__})") from None
