"""FSDP (FSDP2 ``fully_shard`` on the trainable Q-Former layers, the rest replicated)
trains BLIP-2 like one process: 2 gloo ranks x batch 4 with ``run.fsdp: true`` against
1 process x batch 8, through the real runner, for stage 1 (ITC + ITM + ITG, cross-attention
keys/values computed once per image by ``QFormer.cross_kv``) and stage 2 (tiny OPT), with
gradient clipping, 2 accumulated micro-batches per step and a corrupt image on one rank;
in stage 1 the ViT trains too (its blocks are sharded as well) with activation
checkpointing in the ViT and the Q-Former.

Compared with the single process (which has no sharding and no FSDP code path): the logged
losses at every step, the trained weights, and the validation results - evaluated with
the sharded weights gathered, on a split the ranks hold unevenly (2 batches on rank 0, 1 on
rank 1: a forward that gathered shards would hang). A fresh FSDP runner resumed from the sharded run's
step-2 checkpoint reaches the same weights as the uninterrupted run.

Checkpoints: the FSDP run's are ``torch.distributed.checkpoint`` folders (an index and one
shard file per rank, sharded parameters split between them); their exported weights equal
the single process's full checkpoint of the same step; one process (no FSDP, no process
group) resumes the 2-rank run with ``run.resume: true``, skipping a newest checkpoint with
a truncated shard, and reaches the single process's uninterrupted weights.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_ddp_blip2 import LOSS_KEYS, assert_same_losses, one_process_of_8_and_two_ranks_of_4, train_rows
from script_env import torchrun

from lavislike.common.sharded_checkpoint import export_weights

SCRIPT = Path(__file__).parent / "fsdp_blip2_script.py"
SCALER_SCRIPT = Path(__file__).parent / "fsdp_scaler_script.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_blip2")
    one, two = one_process_of_8_and_two_ranks_of_4(SCRIPT, out)
    assert "trainable blocks sharded" in two and "run.fsdp ignored: single process" in one
    return out


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:09d}"


@pytest.fixture(scope="module")
def resumed_in_one_process(runs):
    """The 2-rank runs' checkpoints (step 3's rank-1 shard truncated) resumed in this process."""
    from fsdp_blip2_script import run

    out = runs / "one_resumed"
    for stage in ("stage1", "stage2"):
        shutil.copytree(runs / "two" / stage / "checkpoints", out / stage / "checkpoints")
        shard = step_dir(out / stage, 3) / "__1_0.distcp"
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        run(out / stage, stage, 8, resume=True)
    return out


# 2 ranks against one process: DDP's 2 ranks differ from one process by the same spread
# (one AdamW step is ~1e-3). All but one element agree to 3e-6; element (16, 22) of stage 1's
# first cross-attention query weight gets a gradient ~1e-9 at step 1 (typical: 4e-5), below
# AdamW's eps, so its rounding noise becomes up to 3e-5 of the step there
ACROSS_RANK_COUNTS = 5e-5


def assert_weights_close(w1: dict, w2: dict, atol: float) -> None:
    assert set(w1) == set(w2)
    for k in w1:
        if k.endswith("key.bias"):
            continue  # exactly-zero gradients: AdamW amplifies their rounding (test_ddp_blip2)
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=atol, msg=k)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_fsdp_two_gloo_ranks_train_and_evaluate_like_one_process(runs, stage):
    one, two = runs / "one" / stage, runs / "two" / stage
    assert_same_losses(one, two, stage)
    w1, w2 = load_file(str(one / "final.safetensors")), load_file(str(two / "final.safetensors"))
    assert_weights_close(w1, w2, atol=ACROSS_RANK_COUNTS)
    init = load_file(str(runs / "one" / stage / "checkpoints" / f"step_{1:09d}" / "model.safetensors"))
    assert sum(int((w1[k] - init[k]).abs().max() > 1e-5) for k in w1) > len(w1) // 2  # steps 2, 3 trained

    res1 = sorted(json.loads((one / "result" / "val_epoch1.json").read_text()), key=lambda r: r["id"])
    res2 = sorted(json.loads((two / "result" / "val_epoch1.json").read_text()), key=lambda r: r["id"])
    assert [r["id"] for r in res1] == [r["id"] for r in res2] == list(range(5))
    for r1, r2 in zip(res1, res2):
        if stage == "stage1":
            assert abs(r1["score"] - r2["score"]) <= 1e-4, (r1, r2)
        else:
            assert r1["caption"] == r2["caption"]


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_fsdp_resume_from_sharded_checkpoint_gives_the_uninterrupted_weights(runs, stage):
    two = runs / "two" / stage
    full, resumed = train_rows(two), train_rows(two / "resumed")
    assert [r["step"] for r in resumed] == [3]
    for key in LOSS_KEYS[stage]:
        assert abs(full[-1][key] - resumed[0][key]) <= 1e-6 * max(1.0, abs(full[-1][key])), key
    before = load_file(str(export_weights(step_dir(two, 2), two / "step2.safetensors")))
    w_full, w_resumed = load_file(str(two / "final.safetensors")), load_file(str(two / "resumed" / "final.safetensors"))
    assert_weights_close(w_full, w_resumed, atol=1e-7)
    assert any((w_full[k] - before[k]).abs().max() > 1e-5 for k in w_full)  # step 3 moved the weights


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_fsdp_checkpoints_are_sharded_dcp_folders_holding_the_full_state(runs, stage):
    from torch.distributed.checkpoint import FileSystemReader

    one, two = runs / "one" / stage, runs / "two" / stage
    for step in (1, 2):
        folder = step_dir(two, step)
        names = {p.name for p in folder.iterdir()}
        assert {".metadata", "__0_0.distcp", "__1_0.distcp", "meta.json", "training_state.pt"} <= names
        assert "model.safetensors" not in names  # intermediate: shards only
        assert json.loads((folder / "meta.json").read_text())["sharded"] is True
    index = FileSystemReader(str(step_dir(two, 2))).read_metadata().state_dict_metadata
    layer = "model.qformer.layers.0.self_attn.query.weight"
    for key in (layer, "optim." + layer[len("model."):] + ".exp_avg"):  # split between the 2 ranks
        assert len(index[key].chunks) == 2, key
    # the shards hold the weights of the single process's full checkpoint of the same step
    exported = load_file(str(export_weights(step_dir(two, 2), two / "exported2.safetensors")))
    assert_weights_close(load_file(str(step_dir(one, 2) / "model.safetensors")), exported, atol=ACROSS_RANK_COUNTS)
    # the run's last checkpoint also has full weights, for load_model(checkpoint=...)
    last = load_file(str(step_dir(two, 3) / "model.safetensors"))
    final = load_file(str(two / "final.safetensors"))
    assert set(last) == set(final) and all(torch.equal(last[k], final[k]) for k in final)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_one_process_resumes_the_two_rank_sharded_checkpoint(runs, resumed_in_one_process, stage):
    one, resumed = runs / "one" / stage, resumed_in_one_process / stage
    log = (resumed / "log.txt").read_text()
    assert "skipping damaged checkpoint step_000000003" in log and "__1_0.distcp: truncated" in log
    assert [r["step"] for r in train_rows(resumed)] == [3]
    for key in LOSS_KEYS[stage]:  # step 3 from the resharded state: the single process's step 3
        full, again = train_rows(one)[-1][key], train_rows(resumed)[0][key]
        assert abs(full - again) <= 1e-5 * max(1.0, abs(full)), key
    w1, w_resumed = load_file(str(one / "final.safetensors")), load_file(str(resumed / "final.safetensors"))
    assert_weights_close(w1, w_resumed, atol=ACROSS_RANK_COUNTS)  # trained 2 steps on 2 ranks


def test_fsdp_grad_scaler_unscales_shards_and_skips_on_every_rank_together(tmp_path):
    """fp16 with FSDP (the scaler is device-agnostic; fp16 autocast itself needs a GPU)."""
    two = torchrun(SCALER_SCRIPT, str(tmp_path), timeout=200)
    assert two.returncode == 0, two.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["sharded"] == "DTensor"
        assert r["unscale_err"] <= 1e-6 * r["scale0"]  # scaled then unscaled == unscaled grads
        assert r["scale_after_skip"] == r["scale0"] / 2  # rank 1's inf reached rank 0 too
        assert r["moved_on_skip"] == 0.0 and r["finite"]
