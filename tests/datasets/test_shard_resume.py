"""Webdataset shards read in a fixed order and resumed without decoding what was consumed.

The reference for a resumed stream is the uninterrupted one: a TrainStream restarted from
a saved position must give exactly the batches (images after random crops, captions) that
the uninterrupted stream gives from that point, with DataLoader workers and across epochs.
"""
from __future__ import annotations

import pytest
import torch
from fixtures import real_formats as rf

from lavislike.datasets.builders.laion import LaionDataset, expand_shards
from lavislike.datasets.collate import collate
from lavislike.datasets.shard_stream import StreamPosition, count_samples, worker_shares
from lavislike.processors import build_processor
from lavislike.runners.data import TrainStream

N_SHARDS, PER_SHARD = 3, 5


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("wds")
    exp = rf.write_laion(root, n_shards=N_SHARDS, per_shard=PER_SHARD)
    return [str(root / f"laion/shards/{s:05d}.tar") for s in range(N_SHARDS)], exp


def dataset(urls, **kw) -> LaionDataset:
    vis = build_processor({"name": "blip_image_train", "image_size": 16})  # crop, flip, RandAugment
    return LaionDataset(urls, vis, build_processor({"name": "blip_caption"}), **kw)


def stream(ds, workers: int, rank: int = 0, world: int = 1) -> TrainStream:
    return TrainStream(ds, batch_size=2, seed=7, rank=rank, world_size=world, num_workers=workers, collate_fn=collate)


def batches(s: TrainStream, n: int) -> list[tuple]:
    out = []
    for _ in range(n):
        b = s.next()
        out.append((b.get("image", torch.zeros(0)), tuple(b.get("text_input", [])),
                    tuple(x.path for x in b.get("bad_samples", []))))
    return out


def same(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b)
    for (ia, ta, ba), (ib, tb, bb) in zip(a, b):
        assert ta == tb and ba == bb
        assert torch.equal(ia, ib)


@pytest.mark.parametrize("workers, opts", [
    (0, {"resampled": True, "shuffle_buffer": 3}),
    (2, {"resampled": True, "shuffle_buffer": 3}),
    (2, {"resampled": False, "shuffle_buffer": 4}),  # uneven workers; the pass ends, epoch 1 begins
    (2, {"resampled": True, "shuffle_buffer": 0, "samples_per_epoch": 8}),
])
def test_resumed_stream_gives_the_uninterrupted_batches(shards, workers, opts):
    urls, _ = shards
    full_stream = stream(dataset(urls, **opts), workers)
    full = batches(full_stream, 12)
    for cut in (1, 3, 5):
        first = stream(dataset(urls, **opts), workers)
        same(batches(first, cut), full[:cut])
        state = first.state_dict()
        resumed = stream(dataset(urls, **opts), workers)
        resumed.load_state_dict(state)
        same(batches(resumed, 12 - cut), full[cut:])
    if not opts["resampled"]:
        assert full_stream.epoch >= 1  # the resumes above crossed an epoch end


def test_one_pass_reads_every_sample_once_split_between_ranks_and_workers(shards):
    """resampled: false gives every sample of every shard exactly once per epoch, whatever the
    split; the keys are read from the tar files' contents (the fixture's captions)."""
    urls, exp = shards
    keys = set(exp["captions"])
    seen = []
    for rank in range(2):
        ds = dataset(urls, resampled=False, shuffle_buffer=3)
        position = StreamPosition(seed=3, epoch=0, batches=0, batch_size=1, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(ds.at_position(position), batch_size=1, num_workers=2,
                                             collate_fn=collate)
        for b in loader:
            seen += [next(w for w in t.split() if w.isdigit()) for t in b.get("text_input", [])]
            seen += [x.path.split("#")[1] for x in b.get("bad_samples", [])]
    assert sorted(seen) == sorted(keys)


@pytest.mark.parametrize("consumed, buffer", [(5, 0), (6, 0), (6, 3)])
def test_resume_decodes_nothing_it_skips(shards, monkeypatch, consumed, buffer):
    """Skipping 5 batches (10 samples: two whole shards) or 6 (two shards and two samples of
    the third, buffer-shuffled or not) makes items of the next batch's samples only."""
    urls, _ = shards
    opened = []
    real = LaionDataset.to_item
    monkeypatch.setattr(LaionDataset, "to_item", lambda self, s, rng: opened.append(s["__key__"]) or real(self, s, rng))
    full = stream(dataset(urls, resampled=False, shuffle_buffer=buffer), 0)
    expected = batches(full, consumed + 1)[-1]
    opened.clear()
    s = stream(dataset(urls, resampled=False, shuffle_buffer=buffer), 0)
    s.load_state_dict({"data_epoch": 0, "consumed": consumed, "sampler_seed": 7})
    same(batches(s, 1), [expected])
    assert len(opened) == 2


def test_counts_and_worker_shares(shards):
    urls, _ = shards
    assert [count_samples(u) for u in urls] == [PER_SHARD] * N_SHARDS
    assert count_samples(str(urls[0]) + ".missing") == 0
    assert worker_shares(5, [None, None]) == ([3, 2], 1)
    assert worker_shares(6, [None, None, None]) == ([2, 2, 2], 0)
    # worker 0 ends after 1 batch: the loader then only asks workers 1 and 2
    assert worker_shares(6, [1, 6, None]) == ([1, 3, 2], 2)
    assert worker_shares(9, [1, 3, 2]) == ([1, 3, 2], 2)


def test_expand_shards_keeps_absolute_paths(shards):
    urls, _ = shards
    assert expand_shards(urls) == urls


def test_resume_with_other_workers_warns(shards, caplog):
    urls, _ = shards
    first = stream(dataset(urls), 0)
    batches(first, 2)
    assert first.state_dict()["num_workers"] == 0 and first.state_dict()["world_size"] == 1
    other = stream(dataset(urls), 2)
    with caplog.at_level("WARNING"):
        other.load_state_dict(first.state_dict())
    assert "1 processes x 0 workers" in caplog.text and "1 x 2" in caplog.text
