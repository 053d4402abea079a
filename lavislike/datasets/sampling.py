"""Feeding batches: sharded samplers, image-id aware batches, multi-dataset mixing.

* :func:`build_dataloader` - a ``DataLoader`` with :func:`~lavislike.datasets.collate.collate`
  and a ``DistributedSampler`` built from :mod:`lavislike.common.dist` (rank 0 of 1
  without a process group, so the same code runs in one process).
* :class:`ImageIdBatchSampler` - for retrieval fine-tuning: no image id twice in a
  global batch (a repeated image would be a false negative for ITC), sharded over ranks.
* :class:`MultiDatasetLoader` - LAVIS's way of mixing corpora: at each step one loader is
  picked with probability proportional to its ``sample_ratio``; batches never mix
  corpora, so every batch has one set of keys. The pick uses a seeded generator shared
  by all ranks, so all ranks see the same corpus at the same step.
"""
from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from lavislike.common import dist
from lavislike.datasets.collate import collate
from lavislike.errors import ConfigError


def make_sampler(dataset: Dataset, shuffle: bool, seed: int = 0, drop_last: bool = False) -> DistributedSampler:
    """A ``DistributedSampler`` over the current ranks (works with no process group).

    Without ``drop_last`` the last shard is padded with repeated indices so every rank
    runs the same number of steps; evaluation removes repeats by ``instance_id``.
    """
    return DistributedSampler(
        dataset,
        num_replicas=dist.get_world_size(),
        rank=dist.get_rank(),
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )


class ImageIdBatchSampler(Sampler[list[int]]):
    """Batches in which each image id appears at most once per global batch.

    A global batch holds ``batch_size * world_size`` indices; this rank yields its
    slice. Indices that would repeat an image in the batch being filled wait for a later
    batch, so every index is used once per epoch (except a dropped incomplete tail).

    Args:
        image_ids: image id of every dataset index.
        batch_size: per-rank batch size.
        shuffle: reshuffle every epoch (call :meth:`set_epoch`).
        seed: shuffling seed, the same on all ranks.
        drop_last: drop the final incomplete global batch (keeps ranks in step).
        rank, world_size: defaults from :mod:`lavislike.common.dist`.
    """

    def __init__(
        self,
        image_ids: Sequence,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.image_ids = list(image_ids)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.rank = dist.get_rank() if rank is None else rank
        self.world_size = dist.get_world_size() if world_size is None else world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        """All global batches of this epoch (the same on every rank)."""
        n = len(self.image_ids)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        size = self.batch_size * self.world_size
        pending, batches = deque(order), []
        while pending:
            current, seen, deferred = [], set(), []
            while pending and len(current) < size:
                idx = pending.popleft()
                if self.image_ids[idx] in seen:
                    deferred.append(idx)  # its image is already in this batch
                else:
                    current.append(idx)
                    seen.add(self.image_ids[idx])
            pending.extendleft(reversed(deferred))  # deferred go first in the next batch
            batches.append(current)
        if self.drop_last:  # the tail can hold several short batches (one image's captions)
            batches = [b for b in batches if len(b) == size]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            per_rank = -(-len(batch) // self.world_size)
            mine = batch[self.rank * per_rank : (self.rank + 1) * per_rank]
            if mine:
                yield mine

    def __len__(self) -> int:
        return len(self.global_batches())


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    is_train: bool = True,
    seed: int = 0,
    image_id_aware: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader following the collate contract, sharded over ranks.

    Args:
        dataset: a map-style dataset from a builder.
        batch_size: per-rank batch size.
        num_workers: loader worker processes.
        is_train: shuffle and drop the last incomplete batch (train) or keep order (eval).
        seed: shuffling seed (call ``loader.sampler.set_epoch`` / ``batch_sampler.set_epoch``
            each epoch - :func:`set_epoch` does it).
        image_id_aware: use :class:`ImageIdBatchSampler` over ``dataset.annotation``'s
            image ids (retrieval fine-tuning).
        pin_memory: pin host memory for faster GPU copies.
    """
    common = dict(num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory,
                  persistent_workers=num_workers > 0)
    if image_id_aware:
        img_ids = getattr(dataset, "img_ids", None)
        keys = [dataset._image_key(a) for a in dataset.annotation]
        ids = [img_ids[k] for k in keys] if img_ids else keys
        sampler = ImageIdBatchSampler(ids, batch_size, shuffle=is_train, seed=seed, drop_last=is_train)
        return DataLoader(dataset, batch_sampler=sampler, **common)
    sampler = make_sampler(dataset, shuffle=is_train, seed=seed, drop_last=is_train)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=is_train, **common)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a loader from :func:`build_dataloader` for ``epoch``."""
    for obj in (loader.sampler, loader.batch_sampler):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


class MultiDatasetLoader:
    """Endless iterator over several loaders, picking one per step by ratio.

    Args:
        loaders: iterables of batches. Exhausted ones restart (a DataLoader with
            :func:`set_epoch` advanced, so reshuffled); endless ones (the runner's
            per-corpus streams) never need to.
        ratios: relative weights (``sample_ratio`` of each dataset block); None for
            equal weights. A weight of 0 leaves its loader out.
        seed: seeds the choice of loader (identical on every rank).

    The choice depends only on ``seed`` and the number of draws, so every rank picks the
    same corpus at the same step; :meth:`state_dict` / :meth:`load_state_dict` carry the
    chooser across a resume.

    Example:
        >>> mixed = MultiDatasetLoader([coco_loader, vg_loader], ratios=[2, 1])
        >>> batch = next(mixed)
        >>> mixed.last_index          # 0 (coco) or 1 (vg)
    """

    def __init__(self, loaders: Sequence[Iterable], ratios: Sequence[float] | None = None, seed: int = 0):
        if not loaders:
            raise ConfigError("MultiDatasetLoader needs at least one loader")
        ratios = [1.0] * len(loaders) if ratios is None else [float(r) for r in ratios]
        if len(ratios) != len(loaders) or any(not r >= 0 for r in ratios) or sum(ratios) <= 0:
            raise ConfigError(f"sample ratios {ratios} must be one non-negative number per loader, not all 0")
        self.loaders = list(loaders)
        self.probs = torch.tensor(ratios, dtype=torch.double) / sum(ratios)
        self.generator = torch.Generator().manual_seed(seed)
        self.epochs = [0] * len(self.loaders)
        self.iters = [iter(ld) for ld in self.loaders]
        self.last_index = -1
        self.draws = 0

    def __iter__(self) -> "MultiDatasetLoader":
        return self

    def __next__(self) -> dict:
        i = int(torch.multinomial(self.probs, 1, generator=self.generator))
        self.last_index = i
        self.draws += 1
        return self._read(i)

    def repeat(self) -> dict:
        """Another batch from the loader of the last step, without drawing again.

        For replacing an unusable batch (every sample bad) while keeping the sequence of
        choices - and so the ranks - in step.
        """
        if self.last_index < 0:
            return next(self)
        return self._read(self.last_index)

    def _read(self, i: int) -> dict:
        try:
            return next(self.iters[i])
        except StopIteration:
            self.epochs[i] += 1
            if isinstance(self.loaders[i], DataLoader):
                set_epoch(self.loaders[i], self.epochs[i])
            self.iters[i] = iter(self.loaders[i])
            return next(self.iters[i])

    def state_dict(self) -> dict:
        """The chooser's position: generator state, draws, restarts per loader.

        The loaders' own positions are not included (a DataLoader cannot be resumed
        mid-epoch); the runner's streams save theirs.
        """
        return {"generator": self.generator.get_state(), "draws": self.draws,
                "epochs": list(self.epochs), "last_index": self.last_index}

    def load_state_dict(self, state: dict) -> None:
        """Continue the choices from a :meth:`state_dict`."""
        if len(state.get("epochs", [])) != len(self.loaders):
            raise ConfigError(f"mixer state is for {len(state.get('epochs', []))} loaders, "
                              f"this one has {len(self.loaders)}")
        self.generator.set_state(state["generator"])
        self.draws = int(state.get("draws", 0))
        self.epochs = [int(e) for e in state["epochs"]]
        self.last_index = int(state.get("last_index", -1))
        for i, loader in enumerate(self.loaders):
            if isinstance(loader, DataLoader) and self.epochs[i]:
                set_epoch(loader, self.epochs[i])
                self.iters[i] = iter(loader)
