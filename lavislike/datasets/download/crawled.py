"""Turn an img2dataset crawl (``--output_format files``) into a LAVIS annotation file.

Web corpora (CC3M, CC12M, SBU) ship as URL lists; after crawling them with img2dataset
the images lie in numbered folders next to a ``.txt`` caption and a ``.json`` record.
This writes the ``[{"image": ..., "caption": ...}, ...]`` file the caption builders read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from lavislike.common.io import write_json_atomic
from lavislike.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def annotations_from_img2dataset(images_dir: str | os.PathLike, out_json: str | os.PathLike) -> int:
    """Write the annotation list for every crawled image that has a caption.

    Args:
        images_dir: img2dataset ``--output_folder`` (images in ``00000/000000001.jpg``).
        out_json: annotation file to write; ``image`` paths are relative to
            ``images_dir`` (the builder's ``build_info.images.storage``).

    Returns:
        The number of annotation rows written.

    Raises:
        DataError: the folder is missing or holds no captioned image.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise DataError(f"img2dataset output folder not found: {root}")
    rows = []
    for image in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        caption, url = None, None
        txt, meta = image.with_suffix(".txt"), image.with_suffix(".json")
        if meta.is_file():
            try:
                record = json.loads(meta.read_text())
                caption, url = record.get("caption"), record.get("url")
            except json.JSONDecodeError:
                pass
        if not caption and txt.is_file():
            caption = txt.read_text().strip()
        if caption:
            row = {"image": image.relative_to(root).as_posix(), "caption": caption}
            if url:
                row["url"] = url
            rows.append(row)
    if not rows:
        raise DataError(f"{root}: no image with a caption (.txt or .json 'caption') found")
    write_json_atomic(out_json, rows)
    return len(rows)
