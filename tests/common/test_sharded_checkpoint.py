"""Sharded (torch.distributed.checkpoint) training checkpoints in one process: what the
folder holds, a round trip of weights and AdamW state against the saved model's own,
the damaged-checkpoint fallback, and the export to safetensors. The 2-rank FSDP runs
(writing one shard per rank, resuming at another world size) are in
tests/runners/test_fsdp_blip2.py."""
import json
import logging
from functools import partial

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lavislike.common.checkpoint import load_checkpoint, load_latest_checkpoint, save_checkpoint
from lavislike.common.sharded_checkpoint import export_weights, load_sharded, save_sharded
from lavislike.errors import CheckpointError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(3, 3).requires_grad_(False)
        self.head = nn.Linear(3, 4)
        self.unused = nn.Linear(4, 1)  # trainable, never in the loss: no AdamW state

    def forward(self, x):
        return self.head(self.frozen(x)).square().mean()


KEYS = {"head.weight", "head.bias", "unused.weight", "unused.bias"}


def _trained(steps: int, seed: int = 0):
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.05)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 3)).backward()
        opt.step()
    return model, opt


def _save(out, step, model, opt):
    return save_checkpoint(out, step, model_state=None, train_state={"scheduler": {"s": step}}, meta={},
                           write_shards=partial(save_sharded, model=model, optimizer=opt, keys=KEYS))


def _loader(model, opt):
    return lambda folder, train_state: load_sharded(folder, model, opt, KEYS, train_state["optimizer"])


def test_sharded_checkpoint_round_trip_and_export(tmp_path):
    model, opt = _trained(2)
    ckpt = _save(tmp_path, 2, model, opt)
    names = {p.name for p in ckpt.iterdir()}
    assert {".metadata", "__0_0.distcp", "training_state.pt", "meta.json", "rng_rank0.pt"} <= names
    assert "model.safetensors" not in names and json.loads((ckpt / "meta.json").read_text())["sharded"] is True

    fresh, fresh_opt = _trained(0, seed=1)
    with pytest.raises(CheckpointError, match="sharded .*export_weights"):
        load_checkpoint(ckpt, fresh)  # no shard loader: a one-line error, not a KeyError
    other = {"head.weight", "head.bias"}  # a model whose trainable weights are others: one line naming them
    with pytest.raises(CheckpointError, match=r"unknown keys \['unused.bias', 'unused.weight'\]"):
        rest = torch.load(ckpt / "training_state.pt", weights_only=True)["optimizer"]
        load_sharded(ckpt, fresh, fresh_opt, other, rest)
    assert not torch.equal(fresh.head.weight, model.head.weight)  # untouched
    train_state, meta = load_checkpoint(ckpt, fresh, load_shards=_loader(fresh, fresh_opt))
    assert meta["global_step"] == 2 and train_state["scheduler"] == {"s": 2}
    for k in KEYS:
        assert torch.equal(fresh.state_dict()[k], model.state_dict()[k]), k
    assert not torch.equal(fresh.frozen.weight, model.frozen.weight)  # frozen weights are not in it
    saved, loaded = opt.state_dict(), fresh_opt.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    assert saved["state"].keys() == loaded["state"].keys()  # `unused` still has no state
    for i, s in saved["state"].items():
        for field, v in s.items():
            assert torch.equal(loaded["state"][i][field], v), (i, field)

    exported = load_file(str(export_weights(ckpt, tmp_path / "w.safetensors")))
    assert exported.keys() == KEYS and all(torch.equal(exported[k], model.state_dict()[k]) for k in KEYS)
    with pytest.raises(CheckpointError, match="not a sharded checkpoint"):
        export_weights(tmp_path, tmp_path / "x.safetensors")


@pytest.mark.parametrize("damage", ["truncated shard", "missing shard", "garbled index", "no meta.json"])
def test_damaged_sharded_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, lavislike_log):
    model, opt = _trained(1)
    _save(tmp_path, 1, model, opt)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    model, opt = _trained(2)
    newest = _save(tmp_path, 2, model, opt)
    shard = newest / "__0_0.distcp"
    if damage == "truncated shard":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size - 8])
    elif damage == "missing shard":
        shard.unlink()
    elif damage == "garbled index":
        (newest / ".metadata").write_bytes(b"\x80\x04garbage")
    else:
        (newest / "meta.json").unlink()
    fresh, fresh_opt = _trained(0, seed=1)
    folder, _, meta = load_latest_checkpoint(tmp_path, fresh, load_shards=_loader(fresh, fresh_opt))
    assert folder.name == "step_000000001" and meta["global_step"] == 1
    warned = [r.getMessage() for r in lavislike_log.records if r.levelno == logging.WARNING]
    assert any("step_000000002" in m for m in warned), warned
    for k in KEYS:
        assert torch.equal(fresh.state_dict()[k], reference[k]), k
