"""Sharded samplers cover every index once; image-id batches never repeat an image."""
import collections

import pytest
import torch
from torch.utils.data import DistributedSampler

from lavislike.datasets.sampling import ImageIdBatchSampler, MultiDatasetLoader, build_dataloader, make_sampler
from lavislike.errors import ConfigError


class Toy(torch.utils.data.Dataset):
    def __init__(self, n, tag=0):
        self.n, self.tag = n, tag
        self.annotation = [{"image_id": i // 3, "image": f"{i // 3}.jpg"} for i in range(n)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": torch.zeros(1), "index": i, "text_input": f"d{self.tag}"}

    def _image_key(self, ann):
        return ann["image_id"]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_distributed_shards_disjoint_and_complete(world):
    ds = Toy(31)
    shards = [list(DistributedSampler(ds, num_replicas=world, rank=r, shuffle=True, seed=4, drop_last=True))
              for r in range(world)]
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat)) == (31 // world) * world
    padded = [list(DistributedSampler(ds, num_replicas=world, rank=r, shuffle=False)) for r in range(world)]
    assert set(i for s in padded for i in s) == set(range(31))


def test_make_sampler_without_process_group():
    sampler = make_sampler(Toy(10), shuffle=False)
    assert list(sampler) == list(range(10))


@pytest.mark.parametrize("world", [1, 2])
def test_image_id_batches(world):
    ids = [i // 3 for i in range(60)]  # three captions per image
    samplers = [ImageIdBatchSampler(ids, 4, shuffle=True, seed=1, drop_last=False, rank=r, world_size=world)
                for r in range(world)]
    per_rank = [list(s) for s in samplers]
    assert len(per_rank[0]) == len(per_rank[-1])
    all_idx = [i for rank in per_rank for b in rank for i in b]
    assert sorted(all_idx) == list(range(60))
    for step in zip(*per_rank):  # one global batch
        global_ids = [ids[i] for b in step for i in b]
        assert len(global_ids) == len(set(global_ids))
    samplers[0].set_epoch(1)
    assert list(samplers[0]) != per_rank[0]


def test_build_dataloader_image_id_aware():
    loader = build_dataloader(Toy(24), batch_size=4, image_id_aware=True, seed=0)
    for batch in loader:
        imgs = [i // 3 for i in batch["index"].tolist()]
        assert len(imgs) == len(set(imgs)) == 4


def test_build_dataloader_eval_order():
    loader = build_dataloader(Toy(10), batch_size=4, is_train=False)
    assert [b["index"].tolist() for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_multi_dataset_ratios_and_restart():
    loaders = [build_dataloader(Toy(8, tag=t), batch_size=2) for t in range(2)]
    mixed = MultiDatasetLoader(loaders, ratios=[3, 1], seed=0)
    counts = collections.Counter(next(mixed)["text_input"][0] for _ in range(400))
    assert 0.68 < counts["d0"] / 400 < 0.82  # expected 0.75; loaders restarted many times
    a = MultiDatasetLoader(loaders, ratios=[1, 1], seed=5)
    b = MultiDatasetLoader(loaders, ratios=[1, 1], seed=5)
    assert [next(a)["text_input"][0] for _ in range(20)] == [next(b)["text_input"][0] for _ in range(20)]


def test_multi_dataset_state_dict_resumes_choices_and_repeat_does_not_draw():
    loaders = [build_dataloader(Toy(6, tag=t), batch_size=2) for t in range(3)]
    straight = MultiDatasetLoader(loaders, ratios=[1, 2, 3], seed=9)
    want = [straight.last_index for _ in range(30) if next(straight) is not None]
    first = MultiDatasetLoader(loaders, ratios=[1, 2, 3], seed=9)
    head = [first.last_index for _ in range(11) if next(first) is not None]
    state = first.state_dict()
    assert state["draws"] == 11 and sum(state["epochs"]) > 0  # some loaders restarted
    resumed = MultiDatasetLoader(loaders, ratios=[1, 2, 3], seed=9)
    resumed.load_state_dict(state)
    tail = []
    for _ in range(19):
        batch = next(resumed)
        assert resumed.repeat()["text_input"][0] == batch["text_input"][0]  # same corpus, no new draw
        tail.append(resumed.last_index)
    assert head + tail == want
    with pytest.raises(ConfigError, match="for 3 loaders"):
        MultiDatasetLoader(loaders[:2], seed=9).load_state_dict(state)
