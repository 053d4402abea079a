"""LAION (CapFilt-recaptioned) image-text pairs streamed from webdataset shards.

BLIP-2 pre-trains on 115M LAION images whose web text was ranked together with ten
synthetic BLIP captions; the top two are kept and one is sampled at every step. A shard
sample is ``<key>.jpg`` (or .jpeg/.png/.webp) plus ``<key>.json`` whose ``caption`` is a
string or a list of candidate captions (``<key>.txt`` is the fallback). Shards are
resampled with replacement by default (the stream never ends; ``samples_per_epoch`` cuts
it into epochs), as LAVIS does, but in an order fixed by (seed, epoch), split between
ranks and DataLoader workers, so a resumed run skips what it consumed without decoding it
(:mod:`lavislike.datasets.shard_stream`).

A sample with no image, an undecodable image or no caption is a
:class:`~lavislike.datasets.bad_data.SkippedSample` (counted and reported by the runner)
or, in strict mode, a :class:`DataError` naming ``<shard>#<key>``.
"""
from __future__ import annotations

import copy
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
from lavislike.datasets.sample_seed import mix_seed, sample_rng
from lavislike.datasets.shard_stream import (
    READ_ERRORS,
    REMOTE,
    StreamPosition,
    count_samples,
    shard_draws,
    shuffle_buffer,
    tar_samples,
    worker_shares,
)
from lavislike.errors import ConfigError, DataError
from lavislike.registry import DATASETS

logger = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_WORD = re.compile(r"\w")


def expand_shards(patterns: Any) -> list[str]:
    """Shard URLs / paths from brace patterns; relative paths live under the cache dir."""
    from braceexpand import braceexpand

    out = []
    for pattern in _as_list(patterns):
        for url in braceexpand(str(pattern)):
            out.append(url if url.startswith(REMOTE) else str(cache_path(url)))
    return out


class LaionDataset(IterableDataset):
    """A stream of ``{"image", "text_input"}`` items from webdataset shards.

    Args:
        urls: shard paths or URLs (already expanded).
        vis_processor: PIL image -> tensor.
        text_processor: str -> str (or a prefix-LM dict).
        resampled: draw shards with replacement forever (else one shuffled pass over the
            shards per epoch); either way draws are split between ranks and workers.
        shuffle_buffer: samples of a shard held for shuffling (0 or 1: no shuffling); the
            buffer empties at the end of each shard.
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
        self.position: StreamPosition | None = None  # None: seed 0, epoch 0, from the start
        self._counts: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"LaionDataset(name={self.name!r}, shards={len(self.urls)}, resampled={self.resampled})"

    def at_position(self, position: StreamPosition) -> "LaionDataset":
        """A copy whose order follows ``position`` (seed, epoch, batches already consumed).

        :class:`~lavislike.runners.data.TrainStream` resumes through this: nothing consumed
        is decoded again (see :mod:`lavislike.datasets.shard_stream`).
        """
        other = copy.copy(self)
        other.position, other._counts = position, {}
        return other

    def _count(self, url: str) -> int:
        if url not in self._counts:
            self._counts[url] = count_samples(url)
        return self._counts[url]

    def _samples(self, url: str, want=lambda i: True):
        """The shard's samples; an unreadable rest ends it (logged; strict: DataError)."""
        try:
            yield from tar_samples(url, want)
        except READ_ERRORS as exc:
            if self.strict:
                raise DataError(f"strict mode: {self.name}: unreadable shard {url} ({exc})") from None
            logger.warning("%s: skipping the unreadable rest of shard %s: %s", self.name, url, exc)

    def _shard(self, url: str, rng: random.Random, skip: int):
        """``(index, raw sample)`` of one shard in buffer-shuffled order, the first ``skip`` left out."""
        if not skip:
            yield from shuffle_buffer(self._samples(url), self.shuffle_buffer, rng)
            return
        rest = list(shuffle_buffer(range(self._count(url)), self.shuffle_buffer, rng))[skip:]
        wanted, got, j = set(rest), {}, 0
        for i, raw in self._samples(url, wanted.__contains__):
            if raw is None:
                continue
            got[i] = raw
            while j < len(rest) and rest[j] in got:
                yield rest[j], got.pop(rest[j])
                j += 1

    def _worker_totals(self, draw, pos: StreamPosition, workers: int, limit: int | None) -> list[int | None]:
        """Batches each of this rank's workers yields in the epoch (None: endless)."""
        if self.resampled:
            return [None if limit is None else limit // pos.batch_size] * workers
        consumers, totals = pos.world_size * workers, []
        for w in range(workers):
            draws = range(pos.rank * workers + w, len(self.urls), consumers)
            items = sum(self._count(self.urls[draw(k)]) for k in draws)
            totals.append((items if limit is None else min(items, limit)) // pos.batch_size)
        return totals

    def __iter__(self):
        from lavislike.common import dist

        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        pos = self.position or StreamPosition(rank=dist.get_rank(), world_size=dist.get_world_size())
        consumers = pos.world_size * workers
        draw = shard_draws(len(self.urls), pos.seed, pos.epoch, self.resampled)
        limit = math.ceil(self.samples_per_epoch / workers) if self.samples_per_epoch else None
        skip = 0
        if pos.batches:
            shares, turn = worker_shares(pos.batches, self._worker_totals(draw, pos, workers, limit))
            worker = (turn + worker) % workers  # this loader asks its worker 0 first
            skip = shares[worker] * pos.batch_size
        count, k, empty = skip, pos.rank * workers + worker, 0
        while limit is None or count < limit:
            shard = draw(k)
            if shard is None:
                return
            url = self.urls[shard]
            if skip and skip >= self._count(url):  # consumed as a whole: not even opened
                skip -= self._count(url)
                k += consumers
                continue
            empty += 1
            if empty > 2 * len(self.urls) + 10:  # resampled unreadable shards would loop forever
                raise DataError(f"{self.name}: no readable sample in {empty - 1} shard draws in a row "
                                f"(last: {url}); check the shards")
            for i, raw in self._shard(url, random.Random(mix_seed(pos.seed, pos.epoch, k, -1)), skip):
                empty = 0
                seed = mix_seed(pos.seed, pos.epoch, k, i)
                with sample_rng(seed):  # the same crop and caption wherever it is read
                    item = self.to_item(raw, random.Random(seed))
                yield item
                count += 1
                if limit is not None and count >= limit:
                    return
            skip = 0
            k += consumers

    def _bad(self, where: str, reason: str) -> SkippedSample:
        skipped = SkippedSample(where, reason, self.name)
        if self.strict:
            raise strict_error(skipped)
        return skipped

    def to_item(self, sample: dict, rng: random.Random) -> dict | SkippedSample:
        """One webdataset sample (raw bytes per extension) -> dataset item."""
        from PIL import Image

        where = f"{sample.get('__url__', '?')}#{sample.get('__key__', '?')}"
        if "__error__" in sample:
            return self._bad(where, sample["__error__"])
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
        local = [u for u in urls if not u.startswith(REMOTE)]
        missing = [u for u in local if not cache_path(u).is_file()]
        if local and len(missing) == len(local):
            raise DataError(f"{self.name}: no shard found (first missing: {missing[0]}); {self.download_hint}")
        if missing:
            logger.warning("%s: %d of %d shards missing (first: %s); using the rest", self.name, len(missing), len(local), missing[0])
            urls = [u for u in urls if u not in set(missing)]
        cfg = self.config
        return {
            "train": self.with_feature_cache("train", LaionDataset(
                urls,
                self.vis_processors["train"],
                self.text_processors["train"],
                resampled=bool(cfg.get("resampled", True)),
                shuffle_buffer=int(cfg.get("shuffle_buffer", 1000)),
                samples_per_epoch=cfg.get("samples_per_epoch"),
                caption_key=str(cfg.get("caption_key", "caption")),
                strict=bool(cfg.get("strict", False)),
                name=f"{self.name}/train",
            ))  # a stream: refused when feature_cache is set, not silently read from images
        }

    build = build_datasets
