"""Webdataset shards read in a deterministic, resumable order.

A stream's order is a pure function of (seed, epoch, rank, world size, DataLoader workers):

* **shards**: an endless sequence of draws with replacement (``resampled``, LAVIS's
  ``ResampledShards``) or one shuffled pass per epoch; draw ``k`` goes to consumer
  ``k mod (world_size * workers)``, consumer ``rank * workers + worker``.
* **samples**: each shard's samples (members grouped by key, as webdataset does) leave
  through a shuffle buffer seeded by (seed, epoch, draw) and emptied at the shard's end.

A resumed run knows how many batches it consumed; a DataLoader takes batches from its
workers in turn (skipping exhausted ones), so each worker's share follows
(:func:`worker_shares`). A worker skips whole shards by counting their samples from the
tar headers, and within the shard where it stopped it replays the buffer's draws on
sample indices and reads only the members still to come: nothing is decoded.
"""
from __future__ import annotations

import random
import tarfile
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from lavislike.datasets.sample_seed import mix_seed

REMOTE = ("http://", "https://", "pipe:", "gs://", "s3://")  # url prefixes webdataset streams (anything else is a local file)
READ_ERRORS = (OSError, tarfile.TarError, EOFError)


@dataclass(frozen=True)
class StreamPosition:
    """Where a stream (re)starts: the order's seed and epoch, and batches already consumed."""

    seed: int = 0
    epoch: int = 0
    batches: int = 0
    batch_size: int = 1
    rank: int = 0
    world_size: int = 1


def shard_draws(n_shards: int, seed: int, epoch: int, resampled: bool) -> Callable[[int], int | None]:
    """``draw(k)``: the shard index of draw ``k`` (None past the end of a single pass)."""
    if resampled:
        return lambda k: mix_seed(seed, epoch, k) % n_shards
    order = list(range(n_shards))
    random.Random(mix_seed(seed, epoch)).shuffle(order)
    return lambda k: order[k] if k < n_shards else None


def shuffle_buffer(items: Iterable, size: int, rng: random.Random) -> Iterator:
    """webdataset's buffer shuffle, emptied at the end; the draws depend on the count only."""
    if size <= 1:
        yield from items
        return
    buf: list = []

    def draw():
        k = rng.randrange(len(buf))
        buf[k], buf[-1] = buf[-1], buf[k]
        return buf.pop()

    for item in items:
        buf.append(item)
        if len(buf) >= size:
            yield draw()
    while buf:
        yield draw()


def tar_samples(url: str, want: Callable[[int], bool] = lambda i: True) -> Iterator[tuple[int, dict | None]]:
    """``(index, sample)`` per sample of a tar shard: members grouped by key (webdataset's
    rule), ``sample`` holding ``__key__``, ``__url__`` and bytes per extension, or None when
    ``want(index)`` is false (the members' data is then not read; local files seek past it).

    Raises:
        OSError / tarfile.TarError: an unreadable shard (after the samples read so far).
    """
    from webdataset import gopen
    from webdataset.tariterators import base_plus_ext

    local = not url.startswith(REMOTE)
    stream = None if local else gopen(url)
    tf = tarfile.open(url, "r:") if local else tarfile.open(fileobj=stream, mode="r|*")
    try:
        index, key, sample = -1, None, None
        for member in tf:
            if not member.isfile():
                continue
            prefix, suffix = base_plus_ext(member.name)
            if prefix is None or "/__" in "/" + prefix:
                continue
            if prefix != key:
                if key is not None:
                    yield index, sample
                index, key = index + 1, prefix
                sample = {"__key__": prefix, "__url__": url} if want(index) else None
            if sample is not None:
                try:
                    sample[suffix.lower()] = tf.extractfile(member).read()
                except READ_ERRORS as exc:  # kept as a bad sample: counting saw it too
                    sample["__error__"] = f"unreadable tar member {member.name} ({exc})"
        if key is not None:
            yield index, sample
    finally:
        tf.close()
        if stream is not None:
            stream.close()


def count_samples(url: str) -> int:
    """Samples in a shard, from its tar headers (an unreadable rest counts as nothing)."""
    n = 0
    try:
        for i, _ in tar_samples(url, want=lambda i: False):
            n = i + 1
    except READ_ERRORS:
        pass
    return n


def worker_shares(batches: int, totals: list[int | None]) -> tuple[list[int], int]:
    """Batches each DataLoader worker produced when ``batches`` were consumed, and the worker
    whose turn is next.

    A loader asks its workers in turn from worker 0 and skips one that has ended;
    ``totals`` are the workers' batch counts this epoch (None: endless). A resumed loader
    starts at its worker 0 again, so its worker ``w`` plays worker ``(next + w) % W``.
    """
    taken = [0] * len(totals)
    left, turn = batches, 0
    while left > 0:
        active = [w for w, t in enumerate(totals) if t is None or taken[w] < t]
        if not active:
            break
        if all(totals[w] is None for w in active):  # endless: whole rounds at once
            rounds, rest = divmod(left, len(active))
            for j, w in enumerate(active):
                taken[w] += rounds + (j < rest)
            turn = (active[rest - 1] + 1) % len(totals) if rest else active[0]
            break
        for w in active:
            if left == 0:
                break
            taken[w] += 1
            left -= 1
            turn = (w + 1) % len(totals)
    return taken, turn
