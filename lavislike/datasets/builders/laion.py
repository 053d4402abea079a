"""LAION (CapFilt-recaptioned) image-text pairs streamed from webdataset shards.

BLIP-2 pre-trains on 115M LAION images whose web text was ranked together with ten
synthetic BLIP captions; the top two are kept and one is sampled at every step. A shard
sample is ``<key>.jpg`` (or .jpeg/.png/.webp) plus ``<key>.json`` whose ``caption`` is a
string or a list of candidate captions (``<key>.txt`` is the fallback). Shards are
resampled with replacement by default (the stream never ends; ``samples_per_epoch`` cuts
it into epochs), as LAVIS does.

A sample with no image, an undecodable image or no caption is a
:class:`~lavislike.datasets.bad_data.SkippedSample` (counted and reported by the runner)
or, in strict mode, a :class:`DataError` naming ``<shard>#<key>``.
"""
from __future__ import annotations

import io
import json
import logging
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch.utils.data import IterableDataset

from lavislike.common.paths import cache_path
from lavislike.datasets.bad_data import SkippedSample, strict_error
from lavislike.datasets.builder import BaseDatasetBuilder, DatasetConfig, _as_list
from lavislike.datasets.collate import collate
from lavislike.errors import ConfigError, DataError
from lavislike.registry import DATASETS

logger = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_WORD = re.compile(r"\w")
_REMOTE = ("http://", "https://", "pipe:", "gs://", "s3://")


def expand_shards(patterns: Any) -> list[str]:
    """Shard URLs / paths from brace patterns; relative paths live under the cache dir."""
    from braceexpand import braceexpand

    out = []
    for pattern in _as_list(patterns):
        for url in braceexpand(str(pattern)):
            out.append(url if url.startswith(_REMOTE) else str(cache_path(url)))
    return out


class LaionDataset(IterableDataset):
    """A stream of ``{"image", "text_input"}`` items from webdataset shards.

    Args:
        urls: shard paths or URLs (already expanded).
        vis_processor: PIL image -> tensor.
        text_processor: str -> str (or a prefix-LM dict).
        resampled: draw shards with replacement forever (else one pass over the shards,
            split between nodes and DataLoader workers).
        shuffle_buffer: samples held for shuffling (0 or 1: no shuffling).
        samples_per_epoch: items one process yields per epoch (split between its
            DataLoader workers); None for the whole stream.
        caption_key: key of the caption(s) in the sample's json.
        strict: raise on the first bad sample instead of yielding a SkippedSample.
        name: how bad samples name the corpus.
    """

    collater = staticmethod(collate)

    def __init__(
        self,
        urls: list[str],
        vis_processor: Callable | None,
        text_processor: Callable | None,
        resampled: bool = True,
        shuffle_buffer: int = 1000,
        samples_per_epoch: int | None = None,
        caption_key: str = "caption",
        strict: bool = False,
        name: str = "laion",
    ):
        super().__init__()
        if not urls:
            raise ConfigError(f"{name}: no shards given")
        self.urls = list(urls)
        self.vis_processor, self.text_processor = vis_processor, text_processor
        self.resampled, self.shuffle_buffer = resampled, shuffle_buffer
        self.samples_per_epoch, self.caption_key = samples_per_epoch, caption_key
        self.strict, self.name = strict, name

    def __repr__(self) -> str:
        return f"LaionDataset(name={self.name!r}, shards={len(self.urls)}, resampled={self.resampled})"

    def _pipeline(self):
        import webdataset as wds

        if self.resampled:
            stages = [wds.ResampledShards(self.urls)]
        else:
            stages = [wds.SimpleShardList(self.urls), wds.split_by_node, wds.split_by_worker]
        stages.append(wds.tarfile_to_samples(handler=self._shard_error))
        if self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer))
        return wds.DataPipeline(*stages)

    def _shard_error(self, exc: Exception) -> bool:
        """webdataset handler for unreadable shards: log and go on (strict: raise)."""
        if self.strict:
            raise DataError(f"strict mode: {self.name}: unreadable shard ({exc})") from None
        logger.warning("%s: skipping unreadable shard data: %s", self.name, exc)
        return True

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers = info.num_workers if info is not None else 1
        # a different stream of caption choices per worker and per epoch
        rng = random.Random(info.seed if info is not None else torch.initial_seed())
        limit = math.ceil(self.samples_per_epoch / workers) if self.samples_per_epoch else None
        count = 0
        for sample in self._pipeline():
            yield self.to_item(sample, rng)
            count += 1
            if limit is not None and count >= limit:
                return

    def _bad(self, where: str, reason: str) -> SkippedSample:
        skipped = SkippedSample(where, reason, self.name)
        if self.strict:
            raise strict_error(skipped)
        return skipped

    def to_item(self, sample: dict, rng: random.Random) -> dict | SkippedSample:
        """One webdataset sample (raw bytes per extension) -> dataset item."""
        from PIL import Image

        where = f"{sample.get('__url__', '?')}#{sample.get('__key__', '?')}"
        data = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
        if data is None:
            return self._bad(where, f"no image ({'/'.join(IMAGE_EXTS)}) in sample")
        try:
            with Image.open(io.BytesIO(data)) as img:
                image = img.convert("RGB")
        except Exception as exc:  # PIL raises many types for broken bytes
            return self._bad(where, f"corrupt or truncated image ({type(exc).__name__}: {exc})")
        caption = self._caption(sample, rng)
        if not caption or not _WORD.search(caption):
            return self._bad(where, f"empty caption {caption!r}")
        text = self.text_processor(caption) if self.text_processor else caption
        fields = dict(text) if isinstance(text, dict) else {"text_input": text}
        return {"image": self.vis_processor(image) if self.vis_processor else image, **fields}

    def _caption(self, sample: dict, rng: random.Random) -> str | None:
        value = None
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except (json.JSONDecodeError, UnicodeDecodeError):
                meta = {}
            value = meta.get(self.caption_key) if isinstance(meta, dict) else None
        if value is None and "txt" in sample:
            value = sample["txt"].decode("utf-8", errors="replace").strip()
        if isinstance(value, (list, tuple)):
            value = [v for v in value if isinstance(v, str) and v.strip()]
            value = rng.choice(value) if value else None  # CapFilt: one of the kept captions
        return value if isinstance(value, str) else None


@dataclass
class LaionConfig(DatasetConfig):
    """``datasets.laion`` keys on top of the common ones."""

    resampled: bool = True
    shuffle_buffer: int = 1000
    samples_per_epoch: Optional[int] = None
    caption_key: str = "caption"


@DATASETS.register("laion", config=LaionConfig)
class LaionBuilder(BaseDatasetBuilder):
    """LAION-115M CapFilt webdataset shards (pre-training, train split only)."""

    DEFAULT_CONFIGS = {"default": "laion.yaml"}

    @property
    def download_hint(self) -> str:
        return "build the shards with img2dataset: see dataset_card/laion.md or `lavislike download laion --how`"

    def build_datasets(self) -> dict:
        self.build_processors()
        storage = self.config.build_info.get("storage")
        if not storage:
            raise ConfigError(f"datasets.{self.name}.build_info.storage: set the shard pattern(s), e.g. laion/shards/{{00000..00099}}.tar")
        urls = expand_shards(storage)
        local = [u for u in urls if not u.startswith(_REMOTE)]
        missing = [u for u in local if not cache_path(u).is_file()]
        if local and len(missing) == len(local):
            raise DataError(f"{self.name}: no shard found (first missing: {missing[0]}); {self.download_hint}")
        if missing:
            logger.warning("%s: %d of %d shards missing (first: %s); using the rest", self.name, len(missing), len(local), missing[0])
            urls = [u for u in urls if u not in set(missing)]
        cfg = self.config
        return {
            "train": LaionDataset(
                urls,
                self.vis_processors["train"],
                self.text_processors["train"],
                resampled=bool(cfg.get("resampled", True)),
                shuffle_buffer=int(cfg.get("shuffle_buffer", 1000)),
                samples_per_epoch=cfg.get("samples_per_epoch"),
                caption_key=str(cfg.get("caption_key", "caption")),
                strict=bool(cfg.get("strict", False)),
                name=f"{self.name}/train",
            )
        }

    build = build_datasets
