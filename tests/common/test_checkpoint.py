import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lavislike.common.checkpoint import (
    capture_rng_state,
    find_latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from lavislike.errors import CheckpointError


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(3, 2)
        self.tied = self.head.weight  # shares storage: safetensors needs it untied

    def trainable_state_dict(self):
        return {"head.weight": self.head.weight, "head.bias": self.head.bias}


def test_rng_round_trip_is_exact():
    state = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_save_load_trainable_only_and_latest_survives_a_broken_save(tmp_path):
    model = Tiny()
    opt = torch.optim.AdamW(model.head.parameters(), lr=0.1)
    model.head(torch.ones(1, 3)).sum().backward()
    opt.step()
    ckpt = save_checkpoint(tmp_path, 3, model_state=model.trainable_state_dict(),
                           train_state={"optimizer": opt.state_dict(), "scheduler": {"last_step": 2}, "scaler": {}},
                           meta={"data_epoch": 0, "consumed": 3})
    # a save killed half-way leaves only a hidden temp folder behind
    (tmp_path / "checkpoints" / ".tmp_step_000000004").mkdir()
    (tmp_path / "checkpoints" / ".tmp_step_000000004" / "model.safetensors").write_bytes(b"partial")
    assert find_latest_checkpoint(tmp_path) == ckpt
    from safetensors.torch import load_file

    assert set(load_file(str(ckpt / "model.safetensors"))) == {"head.weight", "head.bias"}

    other = Tiny()
    train_state, meta = load_checkpoint(ckpt, other)
    assert torch.equal(other.head.weight, model.head.weight)
    assert not torch.equal(other.frozen.weight, model.frozen.weight)  # frozen weights are not stored
    assert meta["consumed"] == 3 and meta["global_step"] == 3
    opt2 = torch.optim.AdamW(other.head.parameters(), lr=0.1)
    opt2.load_state_dict(train_state["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    ckpt = save_checkpoint(tmp_path, 1, model_state={"nothere.weight": torch.zeros(2)},
                           train_state={}, meta={})
    with pytest.raises(CheckpointError, match="nothere.weight"):
        load_checkpoint(ckpt, Tiny())
    with pytest.raises(CheckpointError, match="meta.json: missing"):
        load_checkpoint(tmp_path / "nowhere", Tiny())


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fds through /proc")
def test_files_reach_the_disk_before_the_folder_is_published(tmp_path, monkeypatch):
    """Every file of the checkpoint and the folder itself are fsynced before the rename
    that makes it the checkpoint resume picks (and the parent after it)."""

    events = []
    real_fsync, real_rename = os.fsync, Path.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(Path, "rename", lambda self, target: (events.append(("rename", str(self))),
                                                             real_rename(self, target))[1])
    model = Tiny()
    save_checkpoint(tmp_path, 5, model_state=model.trainable_state_dict(), train_state={"scheduler": {}}, meta={})
    tmp = str(tmp_path / "checkpoints" / ".tmp_step_000000005")
    publish = events.index(("rename", tmp))
    synced_before = {path for kind, path in events[:publish] if kind == "fsync"}
    for name in ("model.safetensors", "training_state.pt", "meta.json", "rng_rank0.pt"):
        assert f"{tmp}/{name}" in synced_before, name
    assert tmp in synced_before  # the folder's entries
    assert ("fsync", str(tmp_path / "checkpoints")) in events[publish:]  # the rename itself
