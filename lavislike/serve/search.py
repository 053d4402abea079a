"""Text-to-image search over a folder: every image's ITC features are computed once per
folder (and again only when its files change), then each query is one text pass."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from lavislike.errors import DataError
from lavislike.serve.images import UploadError, read_image
from lavislike.serve.models import Served

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
BATCH = 32


def folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


@dataclass
class FolderIndex:
    """The images of one folder and their normalised ITC features (N, Q, D)."""

    paths: list[Path]
    feats: torch.Tensor
    skipped: list[str] = field(default_factory=list)  # unreadable files, with the reason


class ImageSearch:
    """Ranks a folder's images for a text query with the matcher's ITC similarity."""

    def __init__(self, served: Served):
        self.served = served
        self._cache: dict[tuple, FolderIndex] = {}
        self.builds = 0  # how many times features were computed (tests check the cache)

    def index(self, folder: str | Path) -> FolderIndex:
        folder = Path(folder).expanduser().resolve()
        if not folder.is_dir():
            raise DataError(f"image folder {folder} does not exist")
        paths = folder_images(folder)
        if not paths:
            raise DataError(f"image folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
        key = (str(folder), tuple((str(p), p.stat().st_mtime_ns) for p in paths))
        if key not in self._cache:
            self._cache = {key: self._build(paths)}  # one folder's features kept at a time
        return self._cache[key]

    @torch.inference_mode()
    def _build(self, paths: list[Path]) -> FolderIndex:
        model, kept, skipped, feats = self.served.model, [], [], []
        for start in range(0, len(paths), BATCH):
            batch = []
            for path in paths[start:start + BATCH]:
                try:
                    batch.append(self.served.vis(read_image(path)))
                    kept.append(path)
                except UploadError as exc:
                    skipped.append(str(exc))
            if batch:
                feats.append(model.retrieval_image_embeds(torch.stack(batch).to(model.device))["feat"])
        if not feats:
            raise DataError(f"no readable image among {len(paths)} files: {skipped[0]}")
        self.builds += 1
        return FolderIndex(kept, torch.cat(feats), skipped)

    @torch.inference_mode()
    def search(self, query: str, folder: str | Path, top_k: int = 8) -> list[tuple[Path, float]]:
        """The ``top_k`` images of ``folder`` most similar to ``query``, with their ITC score."""
        if not query.strip():
            raise UploadError("type a text to search for")
        index = self.index(folder)
        model = self.served.model
        text = model.retrieval_text_embeds([self.served.txt(query)])["feat"]
        sim = model.itc_similarity(index.feats, text)[:, 0]
        scores, order = sim.float().topk(min(top_k, len(index.paths)))
        return [(index.paths[i], float(s)) for i, s in zip(order.tolist(), scores.tolist())]
