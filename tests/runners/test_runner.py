import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from toy_parts import ToyData, ToyModel, make_runner, train_until_killed  # noqa: E402

from lavislike.common.checkpoint import find_latest_checkpoint  # noqa: E402
from lavislike.runners import NonFiniteLossError  # noqa: E402
from lavislike.tasks.image_text_pretrain import ImageTextPretrainTask  # noqa: E402


def _model(dropout=0.3):
    torch.manual_seed(0)  # frozen weights come from a fixed init, as from pre-trained files
    return ToyModel(dropout=dropout)


def _weights(runner):
    return {k: v.clone() for k, v in runner.unwrapped_model.state_dict().items()}


def test_accumulation_matches_larger_batch(tmp_path):
    a = make_runner(tmp_path / "a", batch_size_train=2, accum_grad_iters=2, max_epoch=1)
    a.train()
    b = make_runner(tmp_path / "b", batch_size_train=4, accum_grad_iters=1, max_epoch=1)
    b.train()
    assert a.global_step == b.global_step == 6
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)
    assert not torch.equal(wa["head.weight"], ToyModel().head.weight)  # it trained


def test_interrupted_and_resumed_run_ends_with_identical_weights(tmp_path):
    kw = dict(max_epoch=2, ckpt_every_steps=4, weight_decay=0.05)
    straight = make_runner(tmp_path / "straight", model=_model(), **kw)
    straight.train()

    first = make_runner(tmp_path / "cut", model=_model(), **kw)
    ckpt = train_until_killed(first, step=9)  # after the mid-epoch-2 checkpoint at step 8
    assert ckpt.name == "step_000000008"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert (meta["data_epoch"], meta["consumed"]) == (1, 2)

    torch.manual_seed(123)  # a fresh process: different RNG until the checkpoint restores it
    resumed = make_runner(tmp_path / "cut", model=_model(), resume=True, **kw)
    resumed.train()
    assert resumed.global_step == straight.global_step == 12
    ws, wr = _weights(straight), _weights(resumed)
    assert all(torch.equal(ws[k], wr[k]) for k in ws)
    saved = torch.load(find_latest_checkpoint(tmp_path / "cut") / "training_state.pt", weights_only=True)
    assert saved["scheduler"]["last_step"] == 11


def test_nan_loss_steps_are_skipped_then_stop(tmp_path):
    # batch 4 without shuffling effects: poison every sample -> every step NaN
    r = make_runner(tmp_path / "nan", datasets={"t": {"train": ToyData(poison=set(range(24)))}},
                    max_consecutive_nan=3)
    before = _weights(r)
    with pytest.raises(NonFiniteLossError, match="3 steps in a row"):
        r.train()
    after = _weights(r)
    assert all(torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads(line) for line in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert sum(row.get("skipped_nonfinite", 0) for row in rows) == 3


def test_some_nan_steps_skipped_training_continues(tmp_path):
    r = make_runner(tmp_path / "some", datasets={"t": {"train": ToyData(poison={0})}}, max_epoch=1)
    out = r.train()
    assert out["global_step"] == 6
    rows = [json.loads(line) for line in (tmp_path / "some" / "metrics.jsonl").read_text().splitlines()]
    assert sum(row.get("skipped_nonfinite", 0) for row in rows) == 1
    assert all(torch.isfinite(v).all() for v in _weights(r).values())


def test_validation_best_checkpoint_curves_and_iter_runner(tmp_path):
    task = ImageTextPretrainTask({"valid_metrics": ["loss"]})
    data = {"toy": {"train": ToyData(), "val": ToyData(n=10, seed=1), "test": ToyData(n=10, seed=2)}}
    r = make_runner(tmp_path / "v", datasets=data, task=task, runner="runner_iter", max_iters=9,
                    iters_per_inner_epoch=4, valid_splits=["val"], test_splits=["test"], amp=True)
    out = r.train()
    assert out["global_step"] == 9
    best = json.loads((tmp_path / "v" / "best.json").read_text())
    assert best["agg_metrics"] == pytest.approx(out["best_agg_metrics"]) and best["agg_metrics"] < 0
    assert (tmp_path / "v" / "model_best.safetensors").is_file()
    assert (tmp_path / "v" / "curves.png").stat().st_size > 1000
    assert "loss" in out["test"]["toy/test"]
    from safetensors.torch import load_file

    assert "frozen.weight" not in load_file(str(tmp_path / "v" / "model_best.safetensors"))
    splits = {json.loads(line)["split"] for line in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()}
    assert splits == {"train", "toy/val", "toy/test"}


def test_default_output_folder_is_under_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = make_runner(None, max_epoch=1, experiment="exp1")
    r.run.output_dir = None
    r.train()
    runs = list((tmp_path / "output" / "exp1").iterdir())
    assert len(runs) == 1 and (runs[0] / "metrics.jsonl").is_file()


def test_one_host_read_per_step(tmp_path, monkeypatch):
    """A step reads one tensor back to the host: the all-reduced losses, which also decide
    the non-finite skip on every rank; logging adds no per-step reads."""
    r = make_runner(tmp_path / "sync", max_epoch=1, log_freq=3, progress_bar=False)
    reads = []
    for name in ("item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, _original=original):
            # the training loop's reads (not the sampler's CPU-side shuffle or the DataLoader's seed)
            if sys._getframe(1).f_code.co_filename.endswith("runner_base.py"):
                reads.append(1)
            return _original(self)

        monkeypatch.setattr(torch.Tensor, name, counted)
    out = r.train()
    assert out["global_step"] == 6 and len(reads) == 6
    rows = [json.loads(line) for line in (tmp_path / "sync" / "metrics.jsonl").read_text().splitlines()]
    logged = [row for row in rows if "loss_mse" in row]
    assert len(logged) == 2 and all(row["loss"] > 0 for row in logged)


def test_frozen_precision_casts_frozen_parts_only(tmp_path):
    from lavislike.models.freezing import freeze

    model = _model()
    freeze(model.frozen)
    r = make_runner(tmp_path / "bf16", model=model, frozen_precision="bf16")
    r.setup()
    assert model.frozen.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert all(p.dtype == torch.float32 for g in r.optimizer.param_groups for p in g["params"])
