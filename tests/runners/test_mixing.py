"""Several training corpora: one per step, drawn by sample_ratio; each shuffled, sharded and
cycling on its own; the position (per corpus and of the draw) survives a resume."""
import json
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import Dataset, DistributedSampler, IterableDataset, default_collate

sys.path.insert(0, str(Path(__file__).parent))
from toy_parts import ToyData, ToyModel, run_cfg, train_until_killed  # noqa: E402

from lavislike.common.checkpoint import find_latest_checkpoint  # noqa: E402
from lavislike.errors import ConfigError  # noqa: E402
from lavislike.registry import RUNNERS  # noqa: E402
from lavislike.runners.data import MixedTrainStream, TrainStream, corpus_seed  # noqa: E402
from lavislike.tasks.base_task import BaseTask  # noqa: E402

# chi-square critical values at p = 0.001 by degrees of freedom
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27}


class Indexed(Dataset):
    """Items that say which corpus and which index they are."""

    def __init__(self, n: int, tag: str):
        self.n, self.tag = n, tag

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"index": i, "corpus": self.tag}


class Stream(IterableDataset):
    """A finite stream of ``n`` items (ends, so the stream's epochs roll over too)."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        return iter({"index": i, "corpus": "stream"} for i in range(self.n))


def mixed(corpora, rank=0, world=1, seed=3, batch_size=1):
    return MixedTrainStream(corpora, batch_size=batch_size, seed=seed, rank=rank, world_size=world, num_workers=0,
                            collate_fn=default_collate)


def chi_square(counts: list[int], ratios: list[float]) -> float:
    total, weight = sum(counts), sum(ratios)
    return sum((c - total * r / weight) ** 2 / (total * r / weight) for c, r in zip(counts, ratios))


def test_frequencies_follow_the_ratios():
    ratios = [5.0, 3.0, 2.0]
    stream = mixed([(f"c{i}", Indexed(6 + i, f"c{i}"), r) for i, r in enumerate(ratios)])
    seen = [stream.next()["corpus"][0] for _ in range(3000)]
    counts = [seen.count(f"c{i}") for i in range(3)]
    assert counts == stream.picks
    assert chi_square(counts, ratios) < CHI2_999[2]
    assert chi_square(counts, [1, 1, 1]) > 100  # the ratios matter: not a uniform choice


def test_default_ratio_is_the_corpus_size_and_a_stream_weighs_one():
    from lavislike.runners.data import default_sample_ratio

    big, small = Indexed(40, "big"), Indexed(10, "small")
    assert (default_sample_ratio(big), default_sample_ratio(Stream(5))) == (40.0, 1.0)
    stream = mixed([("big", big, default_sample_ratio(big)), ("small", small, default_sample_ratio(small)),
                    ("stream", Stream(5), default_sample_ratio(Stream(5)))])
    assert stream.probabilities == pytest.approx({"big": 40 / 51, "small": 10 / 51, "stream": 1 / 51})
    names = [stream.next()["corpus"][0] for _ in range(2000)]
    counts = [names.count(n) for n in ("big", "small", "stream")]
    assert chi_square(counts, [40, 10, 1]) < CHI2_999[2]


def test_each_corpus_is_shuffled_sharded_and_cycles_like_a_distributed_sampler():
    data = {"a": Indexed(10, "a"), "b": Indexed(7, "b")}
    ranks = [mixed([(n, d, 1.0) for n, d in data.items()], rank=r, world=2) for r in range(2)]
    reads = [[], []]  # per rank: (corpus, index) per step
    for r, stream in enumerate(ranks):
        for _ in range(80):
            batch = stream.next()
            reads[r].append((batch["corpus"][0], int(batch["index"][0])))
    assert [c for c, _ in reads[0]] == [c for c, _ in reads[1]]  # the same corpus on both ranks
    for name, ds in data.items():
        seen = {r: [i for c, i in reads[r] if c == name] for r in range(2)}
        per_epoch = -(-len(ds) // 2)
        assert len(seen[0]) > 2 * per_epoch  # it ran out and went on (epoch 2 reached)
        for r in range(2):  # reference: torch's DistributedSampler, epoch by epoch
            want = []
            for epoch in range(len(seen[r]) // per_epoch + 1):
                ref = DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=corpus_seed(3, name))
                ref.set_epoch(epoch)
                want += list(ref)
            assert seen[r] == want[: len(seen[r])]
        first = seen[0][:per_epoch] + seen[1][:per_epoch]
        assert set(first) == set(range(len(ds)))  # one epoch covers the corpus over the two ranks
        assert first != sorted(first)  # shuffled
        assert seen[0][:per_epoch] != seen[0][per_epoch : 2 * per_epoch]  # reshuffled per epoch


def test_stream_position_round_trips_through_a_checkpoint(tmp_path):
    def build():
        return mixed([("a", Indexed(5, "a"), 3.0), ("b", Indexed(4, "b"), 1.0), ("s", Stream(3), 1.0)])

    def read(stream, k):
        out = []
        for _ in range(k):
            batch = stream.next()
            out.append((batch["corpus"][0], int(batch["index"][0])))
        return out

    straight = read(build(), 40)
    first = build()
    head = read(first, 17)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    json.dumps(first.position())  # meta.json must be able to hold it
    resumed = build()
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert head + read(resumed, 23) == straight
    assert resumed.picks == [sum(1 for c, _ in straight if c == n) for n in ("a", "b", "stream")]


def test_retry_keeps_the_corpus_of_the_step():
    stream = mixed([("a", Indexed(6, "a"), 1.0), ("b", Indexed(6, "b"), 1.0)])
    for _ in range(20):
        name = stream.next()["corpus"][0]
        assert stream.retry()["corpus"][0] == name == stream.last_name
    # retries do not move the draw: the choices match a stream that never retried
    replay = mixed([("a", Indexed(6, "a"), 1.0), ("b", Indexed(6, "b"), 1.0)])
    plain = [replay.next()["corpus"][0] for _ in range(20)]
    again = mixed([("a", Indexed(6, "a"), 1.0), ("b", Indexed(6, "b"), 1.0)])
    with_retries = []
    for _ in range(20):
        with_retries.append(again.next()["corpus"][0])
        again.retry()
    assert with_retries == plain


def test_bad_ratios_are_config_errors():
    with pytest.raises(ConfigError, match=r"datasets\.b\.sample_ratio: -1"):
        mixed([("a", Indexed(4, "a"), 1.0), ("b", Indexed(4, "b"), -1.0)])
    with pytest.raises(ConfigError, match="every training corpus has ratio 0"):
        mixed([("a", Indexed(4, "a"), 0.0), ("b", Indexed(4, "b"), 0.0)])


# -- the runner ---------------------------------------------------------------------------------
def make_mixed_runner(tmp, ratios: dict, runner="runner_iter", datasets=None, **run):
    torch.manual_seed(0)
    model = ToyModel(dropout=0.3)
    datasets = datasets or {"a": {"train": ToyData(n=8, seed=0)}, "b": {"train": ToyData(n=12, seed=1)}}
    cfg = OmegaConf.merge(run_cfg(tmp, runner=runner, **run),
                          {"datasets": {name: ({} if r is None else {"sample_ratio": r}) for name, r in ratios.items()}})
    return RUNNERS.get(runner)(cfg, BaseTask(), model, datasets, collate_fn=default_collate,
                               save_config=lambda cfg, out: None)


def _weights(runner):
    return {k: v.clone() for k, v in runner.unwrapped_model.state_dict().items()}


def test_runner_reads_sample_ratio_and_defaults_to_size(tmp_path):
    runner = make_mixed_runner(tmp_path, {"a": 3, "b": None}, max_iters=2)
    stream = runner.train_stream()
    assert isinstance(stream, MixedTrainStream)
    assert stream.probabilities == pytest.approx({"a": 3 / 15, "b": 12 / 15})
    bad = make_mixed_runner(tmp_path, {"a": 3, "b": "many"}, max_iters=2)
    with pytest.raises(ConfigError, match=r"datasets\.b\.sample_ratio: 'many'"):
        bad.train_stream()
    single = make_mixed_runner(tmp_path, {"a": 3}, datasets={"a": {"train": ToyData()}}, max_iters=2)
    assert isinstance(single.train_stream(), TrainStream)  # one corpus: read as before, no mixer


def test_mixed_runner_killed_and_resumed_matches_uninterrupted(tmp_path):
    kw = dict(max_iters=14, iters_per_inner_epoch=5, ckpt_every_steps=4, batch_size_train=2)
    ratios = {"a": 3, "b": 2}
    straight = make_mixed_runner(tmp_path / "straight", ratios, **kw)
    straight.train()

    first = make_mixed_runner(tmp_path / "cut", ratios, **kw)
    ckpt = train_until_killed(first, step=9)  # after the checkpoint at step 8
    assert ckpt.name == "step_000000008"
    meta = json.loads((ckpt / "meta.json").read_text())
    corpora = meta["corpora"]
    assert sum(c["picks"] for c in corpora.values()) == meta["mixer_draws"] == 8
    assert corpora["a"]["data_epoch"] >= 1  # corpus a (4 batches / epoch, drawn 3:2) rolled over
    saved = torch.load(ckpt / "training_state.pt", weights_only=True)["data"]
    assert [c["name"] for c in saved["corpora"]] == ["a", "b"] and saved["mixer"]["draws"] == 8

    torch.manual_seed(123)  # a fresh process: different RNG until the checkpoint restores it
    resumed = make_mixed_runner(tmp_path / "cut", ratios, resume=True, **kw)
    resumed.train()
    assert resumed.global_step == straight.global_step == 14
    ws, wr = _weights(straight), _weights(resumed)
    assert all(torch.equal(ws[k], wr[k]) for k in ws)
    other = make_mixed_runner(tmp_path / "other", {"a": 2, "b": 3}, **kw)  # the ratios change training
    other.train()
    assert not torch.equal(_weights(other)["head.weight"], ws["head.weight"])


def test_epoch_runner_counts_one_pass_over_each_corpus(tmp_path):
    runner = make_mixed_runner(tmp_path, {"a": 1, "b": 1}, runner="runner_base", max_epoch=2, batch_size_train=2)
    out = runner.train()
    assert out["global_step"] == 2 * (8 // 2 + 12 // 2)
    with_stream = make_mixed_runner(tmp_path / "s", {"a": 1, "s": 1}, runner="runner_base",
                                    datasets={"a": {"train": ToyData(n=8)}, "s": {"train": ToyStream()}})
    with pytest.raises(ConfigError, match="runner_iter"):
        with_stream.train()


class ToyStream(IterableDataset):
    def __iter__(self):
        data = ToyData(n=6, seed=5)
        return iter(data[i] for i in range(len(data)))


def test_iter_runner_mixes_a_stream_with_a_map_style_corpus(tmp_path):
    runner = make_mixed_runner(tmp_path, {"a": 1, "s": 1}, max_iters=12, batch_size_train=2,
                               datasets={"a": {"train": ToyData(n=8)}, "s": {"train": ToyStream()}})
    out = runner.train()
    assert out["global_step"] == 12
    meta = json.loads((find_latest_checkpoint(tmp_path) / "meta.json").read_text())
    assert meta["corpora"]["s"]["picks"] > 0 and meta["corpora"]["a"]["picks"] > 0
