"""Per-sample random streams: a sample's augmentation depends on (seed, epoch, sample) only.

DataLoader workers seed their RNGs from a base seed plus the worker id, so a random crop
depends on which worker happened to load the sample; after a resume, batches land on other
workers and get other crops. Seeding torch, ``random`` and numpy from
:func:`mix_seed` ``(seed, epoch, index)`` just around a sample's loading makes the sample
the same wherever and whenever it is loaded. The generators' previous states come back
afterwards, so the model's random streams (dropout, ITM negatives) in the main process
are untouched when there are no workers.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, get_worker_info

_MASK = 2**64 - 1


def mix_seed(*values: int) -> int:
    """A well-spread 63-bit seed from integers (splitmix64 over the values)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK
        h ^= h >> 29
    return h >> 1


@contextmanager
def sample_rng(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator and ``random`` with ``seed`` inside the block.

    Outside DataLoader workers their states are restored afterwards; a worker's generators
    serve nothing else, so there the ~50 us of saving and restoring are spared.
    """
    # torch.manual_seed also seeds every accelerator (~0.5 ms); the CPU generator is enough
    gen = torch.default_generator
    if get_worker_info() is not None:
        gen.manual_seed(seed)
        random.seed(seed)
        yield
        return
    torch_state, py_state = gen.get_state(), random.getstate()
    gen.manual_seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        gen.set_state(torch_state)
        random.setstate(py_state)


class SeededSamples(Dataset):
    """``dataset[index]`` loaded under :func:`sample_rng` ``(mix_seed(seed, epoch, index))``.

    Set :attr:`epoch` before a DataLoader's workers start (they copy the object).
    """

    def __init__(self, dataset: Dataset, seed: int, epoch: int = 0):
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        with sample_rng(mix_seed(self.seed, self.epoch, index)):
            return self.dataset[index]
