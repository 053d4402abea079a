"""Data loading for the runners: rank sharding, deterministic order, resumable position.

The training order of a map-style dataset is a pure function of (seed, data epoch), so a
resumed run re-creates it and starts at the saved position instead of replaying batches;
each sample's random augmentation is seeded from (seed, data epoch, index)
(:mod:`lavislike.datasets.sample_seed`), so it does not depend on the DataLoader worker
that loads it.
A streamed dataset with ``at_position`` (LAION's webdataset shards) starts at the saved
position without decoding what was consumed; other streams are skipped ahead by reading
and dropping batches.

One training corpus is read by a :class:`TrainStream`. Several are mixed by
:class:`MixedTrainStream` as LAVIS's ``MultiIterLoader`` does: each micro-batch comes
from one corpus, drawn with probability proportional to its ``sample_ratio`` by a
generator seeded alike on every rank; each corpus keeps its own shuffled, rank-sharded,
endlessly cycling stream.
"""
from __future__ import annotations

import itertools
import logging
import math
import zlib
from typing import Any, Callable, Iterator

import torch
from lavislike.datasets.sample_seed import SeededSamples
from lavislike.datasets.shard_stream import StreamPosition
from lavislike.errors import ConfigError, DataError
from torch.utils.data import ConcatDataset, DataLoader, Dataset, IterableDataset, Sampler

logger = logging.getLogger("lavislike")


class ShardedSampler(Sampler[int]):
    """This rank's share of a (shuffled) index order, optionally starting mid-way.

    Training (``pad=True``) pads the order by wrapping so every rank gets the same number
    of samples (like ``DistributedSampler``) and deals it out in blocks of ``batch_size``:
    rank ``r`` takes blocks ``r, r+W, ...``, so global batch ``g`` (one process with batch
    ``W*b``) is ranks 0..W-1's ``g``-th batches *in order* - the batch-order-dependent parts
    (ITM's hard negatives) then draw the same. The last, partial global batch goes round
    robin. Evaluation (``pad=False``) gives every sample to exactly one rank and deals all
    blocks, the partial last one too, so each rank's batches are batches one process with
    batch ``b`` makes (batch-composition-dependent validation losses then agree with it).
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 pad: bool = True, batch_size: int = 1):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.batch_size = batch_size
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
        if not self.pad:  # every block on one rank, the partial last one too: one process's batches
            bs = self.batch_size
            return [i for s in range(self.rank * bs, len(order), self.world_size * bs) for i in order[s : s + bs]]
        step = self.world_size * self.batch_size
        full = len(order) // step * step
        blocks = [order[s + self.rank * self.batch_size : s + (self.rank + 1) * self.batch_size]
                  for s in range(0, full, step)]
        return [i for block in blocks for i in block] + order[full:][self.rank :: self.world_size]

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
    """One dataset from the splits of one corpus: concatenated (map-style) or interleaved (streams).

    Different corpora are not combined: :class:`MixedTrainStream` mixes them by ratio.
    """
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
            len(dataset), shuffle=True, seed=seed, rank=rank, world_size=world_size, pad=True,
            batch_size=batch_size)
        self.rank, self.world_size = rank, world_size
        self.epoch, self.consumed = epoch, consumed
        self._it: Iterator | None = None

    def __iter__(self) -> "TrainStream":
        return self

    def __next__(self) -> Any:
        return self.next()

    def batches_per_epoch(self) -> int | None:
        """Micro-batches per data epoch on this rank (None for streams)."""
        if self.streamed:
            return None
        return len(self.sampler._indices()) // self.batch_size

    def _open(self) -> Iterator:
        loader_seed = self.seed * 1009 + self.epoch
        if self.streamed:
            at_position = getattr(self.dataset, "at_position", None)
            dataset = self.dataset if at_position is None else at_position(StreamPosition(
                self.seed, self.epoch, self.consumed, self.batch_size, self.rank, self.world_size))
            loader = make_loader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                                 collate_fn=self.collate_fn, sampler=None, drop_last=True, seed=loader_seed,
                                 pin_memory=self.pin_memory)
            if at_position is not None or not self.consumed:
                return iter(loader)
            logger.info("resume: skipping %d streamed batches by reading them", self.consumed)
            return itertools.islice(iter(loader), self.consumed, None)
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.consumed * self.batch_size)
        # augmentation seeded per (seed, epoch, index): the same crops whichever worker loads a sample
        seeded = SeededSamples(self.dataset, self.seed, self.epoch)
        loader = make_loader(seeded, batch_size=self.batch_size, num_workers=self.num_workers,
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
        raise DataError(f"the training dataset {_describe(self.dataset)} ({len(self.dataset) if not self.streamed else 'stream'} "
                        f"samples) yields no full batch of {self.batch_size}; lower run.batch_size_train")

    retry = next  # one corpus: a replacement for an unusable batch is simply the next one

    def new_epoch(self) -> None:
        """Start the next data epoch now (the rest of the current one is dropped)."""
        self.epoch += 1
        self.consumed = 0
        self._it = None

    def position(self) -> dict:
        """JSON-ready data position (kept in the checkpoint's ``meta.json``)."""
        return {"data_epoch": self.epoch, "consumed": self.consumed, "sampler_seed": self.seed,
                "world_size": self.world_size, "num_workers": self.num_workers}

    def state_dict(self) -> dict:
        """What a resume needs (kept in the checkpoint's train state under ``data``)."""
        return self.position()

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict` (or a ``meta.json`` of an older checkpoint)."""
        if "corpora" in state:
            logger.warning("resume: the checkpoint mixed %d corpora, this run trains on one; "
                           "its data order starts afresh", len(state["corpora"]))
            return
        if state.get("sampler_seed", self.seed) != self.seed:
            logger.warning("resume: run.seed changed since the checkpoint; the data order will differ")
        split = (state.get("world_size", self.world_size), state.get("num_workers", self.num_workers))
        if self.streamed and split != (self.world_size, self.num_workers):
            logger.warning("resume: the checkpoint read the stream with %d processes x %d workers, this run "
                           "uses %d x %d; a stream's order depends on them, so it will differ", *split,
                           self.world_size, self.num_workers)
        self.epoch, self.consumed = int(state["data_epoch"]), int(state["consumed"])
        self._it = None


def _describe(dataset: Dataset) -> str:
    return repr(getattr(dataset, "name", type(dataset).__name__))


def default_sample_ratio(dataset: Dataset) -> float:
    """LAVIS's default weight of a corpus: its size; a stream (size unknown) weighs 1."""
    if isinstance(dataset, IterableDataset):
        return 1.0
    return float(len(dataset))


def corpus_seed(seed: int, name: str) -> int:
    """Order seed of one corpus in a mix: ``seed`` and the corpus name, the same on all ranks.

    Derived from the name, not the position in the list, so a corpus keeps its order when
    others are added or removed.
    """
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


class MixedTrainStream:
    """Several training corpora; each micro-batch comes from one, drawn by ``sample_ratio``.

    The draw is :class:`~lavislike.datasets.sampling.MultiDatasetLoader`'s, seeded with
    ``seed`` on every rank, so all ranks train on the same corpus at the same step (and a
    batch never mixes corpora, whose items may carry different keys). Each corpus is a
    :class:`TrainStream` of its own: a map-style corpus is shuffled per data epoch, sharded
    over ranks and starts its next epoch when it runs out, independently of the others;
    a streamed one is read on.

    Args:
        corpora: ``(name, dataset, sample_ratio)`` per corpus; names must be distinct.
        batch_size, seed, rank, world_size, num_workers, pin_memory: as for
            :class:`TrainStream` (each corpus's order seed is :func:`corpus_seed`).
        collate_fn: used for corpora whose dataset has no ``collater``.

    Example:
        >>> mixed = MixedTrainStream([("coco", coco, 113.0), ("vg", vg, 108.0)], batch_size=8,
        ...                          seed=42, rank=0, world_size=1, num_workers=0, collate_fn=None)
        >>> batch = mixed.next(); mixed.last_name
        'coco'
    """

    def __init__(self, corpora: list[tuple[str, Dataset, float]], *, batch_size: int, seed: int, rank: int,
                 world_size: int, num_workers: int, collate_fn: Callable | None, pin_memory: bool = False):
        from lavislike.datasets.sampling import MultiDatasetLoader

        names = [name for name, _, _ in corpora]
        if len(set(names)) != len(names):
            raise DataError(f"training corpora must have distinct names, got {names}")
        for name, _, ratio in corpora:
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio >= 0:
                raise ConfigError(f"datasets.{name}.sample_ratio: {ratio!r} is not a non-negative number")
        if sum(r for _, _, r in corpora) <= 0:
            raise ConfigError(f"datasets.*.sample_ratio: every training corpus has ratio 0 ({', '.join(names)}); "
                              "give at least one a positive ratio")
        self.names, self.seed, self.batch_size = names, seed, batch_size
        self.ratios = [float(r) for _, _, r in corpora]
        self.streams = [
            TrainStream(ds, batch_size=batch_size, seed=corpus_seed(seed, name), rank=rank, world_size=world_size,
                        num_workers=num_workers, collate_fn=collate_fn_for(ds, collate_fn), pin_memory=pin_memory)
            for name, ds, _ in corpora
        ]
        self.mixer = MultiDatasetLoader(self.streams, self.ratios, seed=seed)
        self.picks = [0] * len(self.streams)  # micro-batches read per corpus (log / tests)

    @property
    def probabilities(self) -> dict[str, float]:
        """Chance of each corpus at a step."""
        return dict(zip(self.names, self.mixer.probs.tolist()))

    @property
    def last_name(self) -> str | None:
        """Name of the corpus the last batch came from."""
        i = self.mixer.last_index
        return self.names[i] if i >= 0 else None

    def next(self) -> Any:
        """Draw a corpus and return its next micro-batch."""
        batch = next(self.mixer)
        self.picks[self.mixer.last_index] += 1
        return batch

    def retry(self) -> Any:
        """Another batch from the corpus of the last step, without a new draw."""
        batch = self.mixer.repeat()
        self.picks[self.mixer.last_index] += 1
        return batch

    def batches_per_epoch(self) -> int | None:
        """Micro-batches of one pass over every drawn corpus (None when one is a stream)."""
        counts = [s.batches_per_epoch() for s, r in zip(self.streams, self.ratios) if r > 0]
        return None if any(c is None for c in counts) else sum(counts)

    def new_epoch(self) -> None:
        """Nothing to do: each corpus starts its next data epoch when it runs out."""

    def position(self) -> dict:
        """JSON-ready data position (kept in the checkpoint's ``meta.json``)."""
        return {"sampler_seed": self.seed, "mixer_draws": self.mixer.draws,
                "corpora": {n: {"data_epoch": s.epoch, "consumed": s.consumed, "picks": p}
                            for n, s, p in zip(self.names, self.streams, self.picks)}}

    def state_dict(self) -> dict:
        """What a resume needs (kept in the checkpoint's train state under ``data``)."""
        return {"sampler_seed": self.seed, "mixer": self.mixer.state_dict(), "ratios": list(self.ratios),
                "corpora": [{"name": n, "data_epoch": s.epoch, "consumed": s.consumed, "picks": p}
                            for n, s, p in zip(self.names, self.streams, self.picks)]}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict`; corpora are matched by name."""
        if "corpora" not in state or "mixer" not in state:
            logger.warning("resume: the checkpoint trained on one corpus, this run mixes %d; "
                           "the data order starts afresh", len(self.names))
            return
        if state.get("sampler_seed", self.seed) != self.seed:
            logger.warning("resume: run.seed changed since the checkpoint; the data order will differ")
        saved = {str(c["name"]): c for c in state["corpora"]}
        if list(saved) != self.names:
            logger.warning("resume: training corpora changed since the checkpoint (%s -> %s); corpora are "
                           "matched by name and the choice of corpus per step starts afresh",
                           list(saved), self.names)
        else:
            if [float(r) for r in state.get("ratios", self.ratios)] != self.ratios:
                logger.warning("resume: sample ratios changed since the checkpoint (%s -> %s)",
                               state.get("ratios"), self.ratios)
            self.mixer.load_state_dict(state["mixer"])
        for i, (name, stream) in enumerate(zip(self.names, self.streams)):
            if name in saved:
                stream.epoch, stream.consumed = int(saved[name]["data_epoch"]), int(saved[name]["consumed"])
                stream._it = None
                self.picks[i] = int(saved[name].get("picks", 0))
