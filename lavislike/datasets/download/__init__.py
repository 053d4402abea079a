"""Download code for the corpora of :mod:`lavislike.datasets.builders`.

Public API:
    download(name, root=None, splits=None, what=("annotations", "images")) -> DownloadReport
    available() -> {name: {"annotations": how, "media": how, "card": path}}
    download_main(argv) -> exit status (``lavislike download``)
    annotations_from_img2dataset(images_dir, out_json) -> rows written
    fetch(url, dest, Checksums(...)) / extract(archive, dest_dir, subdir=None)

Nothing downloads at import time.
"""
from lavislike.datasets.download.archive import extract
from lavislike.datasets.download.cli import build_parser, download_main
from lavislike.datasets.download.core import (
    DownloadReport,
    ManualDownloadRequired,
    available,
    download,
)
from lavislike.datasets.download.crawled import annotations_from_img2dataset
from lavislike.common.fetch import Checksums, fetch

__all__ = [
    "Checksums",
    "DownloadReport",
    "ManualDownloadRequired",
    "annotations_from_img2dataset",
    "available",
    "build_parser",
    "download",
    "download_main",
    "extract",
    "fetch",
]
