"""A damaged newest checkpoint: resume falls back to the previous complete one, with a
warning naming the file, and ends with the weights a resume from that one gives."""
from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from toy_parts import ToyModel, make_runner, train_until_killed  # noqa: E402

from lavislike.errors import CheckpointError  # noqa: E402

KW = dict(max_epoch=2, ckpt_every_steps=4, keep_last_checkpoints=3, weight_decay=0.05)
NEWEST, PREVIOUS = "step_000000008", "step_000000006"


def _model():
    torch.manual_seed(0)
    return ToyModel(dropout=0.3)


def _resume(out: Path):
    torch.manual_seed(123)  # a fresh process: other RNG until the checkpoint restores it
    runner = make_runner(out, model=_model(), resume=True, **KW)
    runner.train()
    return {k: v.clone() for k, v in runner.unwrapped_model.state_dict().items()}


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> Path:
    """A run killed at step 9: checkpoints at steps 4, 6 (end of epoch 1) and 8."""
    out = tmp_path_factory.mktemp("killed") / "run"
    assert train_until_killed(make_runner(out, model=_model(), **KW), step=9).name == NEWEST
    return out


@pytest.fixture(scope="module")
def from_previous(killed_run, tmp_path_factory) -> dict:
    """Reference: the weights of a resume from step 6 (step 8 never written)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    shutil.copytree(killed_run, out)
    shutil.rmtree(out / "checkpoints" / NEWEST)
    (out / "checkpoints" / "latest").write_text(PREVIOUS)
    return _resume(out)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "model.safetensors truncated": ("model.safetensors", _truncate),
    "training_state.pt truncated": ("training_state.pt", _truncate),
    "rng_rank0.pt truncated": ("rng_rank0.pt", _truncate),
    "meta.json garbled": ("meta.json", lambda p: p.write_text('{"global_step": 8, "data_ep')),
    "meta.json not a checkpoint's": ("meta.json", lambda p: p.write_text("[]")),
    "model.safetensors missing": ("model.safetensors", Path.unlink),
    "training_state.pt missing": ("training_state.pt", Path.unlink),
    "meta.json missing": ("meta.json", Path.unlink),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_newest_checkpoint_falls_back(case, killed_run, from_previous, tmp_path, lavislike_log):
    out = tmp_path / "run"
    shutil.copytree(killed_run, out)
    name, damage = DAMAGE[case]
    damage(out / "checkpoints" / NEWEST / name)
    weights = _resume(out)
    assert all(torch.equal(weights[k], from_previous[k]) for k in weights)
    warned = [r.getMessage() for r in lavislike_log.records if r.levelno == logging.WARNING]
    assert any(NEWEST in m and name in m for m in warned), warned
    assert any(f"resumed from {out / 'checkpoints' / PREVIOUS}" in r.getMessage() for r in lavislike_log.records)


def test_every_checkpoint_damaged_is_one_clear_error(killed_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(killed_run, out)
    for step in (NEWEST, PREVIOUS, "step_000000004"):
        _truncate(out / "checkpoints" / step / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        make_runner(out, model=_model(), resume=True, **KW).train()
    assert "no readable checkpoint" in str(err.value) and "\n" not in str(err.value)


def test_a_named_damaged_checkpoint_is_not_swapped_for_another(killed_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(killed_run, out)
    _truncate(out / "checkpoints" / NEWEST / "training_state.pt")
    with pytest.raises(CheckpointError, match="training_state.pt: unreadable"):
        make_runner(out, model=_model(), resume_ckpt_path=str(out / "checkpoints" / NEWEST), **KW).train()
