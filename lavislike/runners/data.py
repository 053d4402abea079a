"""Data loading for the runners: rank sharding, deterministic order, resumable position.

The training order of a map-style dataset is a pure function of (seed, data epoch), so a
resumed run re-creates it and starts at the saved position instead of replaying batches.
Streamed (iterable) datasets are skipped ahead by reading and dropping batches.
"""
from __future__ import annotations

import itertools
import logging
import math
from typing import Any, Callable, Iterator

import torch
from lavislike.errors import DataError
from torch.utils.data import ConcatDataset, DataLoader, Dataset, IterableDataset, Sampler

logger = logging.getLogger("lavislike")


class ShardedSampler(Sampler[int]):
    """This rank's share of a (shuffled) index order, optionally starting mid-way.

    Training (``pad=True``) pads the order by wrapping so every rank gets the same number
    of samples (like ``DistributedSampler``); rank ``r`` takes positions ``r, r+W, ...``,
    so one process with batch ``W*b`` sees the same global batches as ``W`` ranks with
    batch ``b``. Evaluation (``pad=False``) gives every sample to exactly one rank.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 pad: bool = True):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank's share."""
        self.start = start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.world_size > 1:
            total = math.ceil(self.size / self.world_size) * self.world_size
            order += (order * math.ceil(total / max(1, self.size)))[: total - self.size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.start)


class RoundRobin(IterableDataset):
    """Interleave several streamed datasets one sample at a time, until the first ends."""

    def __init__(self, datasets: list[IterableDataset]):
        self.datasets = datasets

    def __iter__(self):
        iters = [iter(d) for d in self.datasets]
        while True:
            for it in iters:
                try:
                    yield next(it)
                except StopIteration:
                    return


def combine(datasets: list[Dataset]) -> Dataset:
    """One training dataset from several: concatenated (map-style) or interleaved (streams)."""
    if len(datasets) == 1:
        return datasets[0]
    if all(not isinstance(d, IterableDataset) for d in datasets):
        return ConcatDataset(datasets)
    return RoundRobin(datasets)


def collate_fn_for(dataset: Dataset, default: Callable | None) -> Callable:
    """The dataset's own ``collater``, else ``default``, else lavislike's batch collate."""
    inner = dataset.datasets[0] if isinstance(dataset, (ConcatDataset, RoundRobin)) else dataset
    fn = getattr(inner, "collater", None) or default
    if fn is None:
        from lavislike.datasets.collate import collate as fn
    return fn


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors in (nested) dicts / lists to ``device``; everything else unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [move_to_device(v, device) for v in batch]
    return batch


def make_loader(dataset: Dataset, *, batch_size: int, num_workers: int, collate_fn: Callable,
                sampler: ShardedSampler | None, drop_last: bool, seed: int, pin_memory: bool = False) -> DataLoader:
    # An explicit generator keeps DataLoader from drawing worker seeds from the global RNG,
    # so creating a loader mid-epoch (resume) does not shift the model's random streams.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_fn, drop_last=drop_last, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=False)


class TrainStream:
    """Endless micro-batches across data epochs, with a saveable position.

    Args:
        dataset: the (combined) training dataset.
        batch_size: per-rank micro-batch size.
        seed: order seed; data epoch ``e`` uses ``seed + e``.
        rank, world_size: sharding.
        num_workers, collate_fn: DataLoader settings.
        epoch, consumed: position to start from (data epoch, micro-batches read in it).
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, seed: int, rank: int, world_size: int,
                 num_workers: int, collate_fn: Callable, epoch: int = 0, consumed: int = 0,
                 pin_memory: bool = False):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.num_workers, self.collate_fn, self.pin_memory = num_workers, collate_fn, pin_memory
        self.streamed = isinstance(dataset, IterableDataset)
        self.sampler = None if self.streamed else ShardedSampler(
            len(dataset), shuffle=True, seed=seed, rank=rank, world_size=world_size, pad=True)
        self.epoch, self.consumed = epoch, consumed
        self._it: Iterator | None = None

    def batches_per_epoch(self) -> int | None:
        """Micro-batches per data epoch on this rank (None for streams)."""
        if self.streamed:
            return None
        return len(self.sampler._indices()) // self.batch_size

    def _open(self) -> Iterator:
        loader_seed = self.seed * 1009 + self.epoch
        if self.streamed:
            loader = make_loader(self.dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                                 collate_fn=self.collate_fn, sampler=None, drop_last=True, seed=loader_seed,
                                 pin_memory=self.pin_memory)
            if self.consumed:
                logger.info("resume: skipping %d streamed batches", self.consumed)
            return itertools.islice(iter(loader), self.consumed, None)
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.consumed * self.batch_size)
        loader = make_loader(self.dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                             collate_fn=self.collate_fn, sampler=self.sampler, drop_last=True,
                             seed=loader_seed, pin_memory=self.pin_memory)
        return iter(loader)

    def next(self) -> Any:
        """The next micro-batch, rolling over into the next data epoch when one ends."""
        for _ in range(2):
            if self._it is None:
                self._it = self._open()
            try:
                batch = next(self._it)
                self.consumed += 1
                return batch
            except StopIteration:
                if self.consumed == 0:
                    break
                self.new_epoch()
        raise DataError(f"the training dataset ({len(self.dataset) if not self.streamed else 'stream'} samples) "
                        f"yields no full batch of {self.batch_size}; lower run.batch_size_train")

    def new_epoch(self) -> None:
        """Start the next data epoch now (the rest of the current one is dropped)."""
        self.epoch += 1
        self.consumed = 0
        self._it = None

    def position(self) -> dict:
        return {"data_epoch": self.epoch, "consumed": self.consumed, "sampler_seed": self.seed}
