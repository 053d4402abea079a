"""BLIP-2 training does not depend on the number of processes: 2 gloo ranks x batch 4 train
like 1 process x batch 8, through the real runner, for stage 1 (ITC + ITM with hard
negatives + ITG) and stage 2 (tiny OPT) - with a corrupt image in the data, so one rank's
batch is a sample short at that step (the single process's batch is then 7 samples).

Compared: the logged losses of every step (the global batch's, not rank 0's) and the
trained weights.

The same launch evaluates a validation loss over a split that does not divide into the
ranks' batches (5 samples, batch 2: one rank runs two batches, the other one). The models'
losses hold collectives, so a rank calling them more often than another would hang (the
timeout fails the test); it must end with the one-process value: each batch's loss weighted
by its size, over the batches one process makes. Reference: the tiny model called directly
on [0,1], [2,3], [4] (batch 2: ITM's one negative candidate per row makes its draw
deterministic).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddp_blip2_script import VALID_BATCH, VALID_SIZE, Pairs, build
from script_env import env_without_torchrun, torchrun

from lavislike.datasets.collate import collate

SCRIPT = Path(__file__).parent / "ddp_blip2_script.py"
LOSS_KEYS = {"stage1": ("loss", "loss_itc", "loss_itm", "loss_lm"), "stage2": ("loss", "loss_lm")}


def train_rows(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"]


def one_process_of_8_and_two_ranks_of_4(script: Path, out: Path) -> tuple[str, str]:
    """Run ``script`` as 1 process (batch 8) into ``out/one`` and 2 gloo ranks (batch 4)
    into ``out/two``; returns their logs (stderr)."""
    out.mkdir(parents=True, exist_ok=True)
    # the single process runs beside the two ranks (a 2-core machine has a core to spare
    # while torchrun starts them), its log in a file so that no pipe fills up
    with open(out / "one.log", "w") as log:
        one = subprocess.Popen([sys.executable, str(script), str(out / "one"), "8"], env=env_without_torchrun(),
                               stdout=subprocess.DEVNULL, stderr=log)
    try:
        two = torchrun(script, str(out / "two"), "4", timeout=400)
        one.wait(timeout=400)
    finally:
        if one.poll() is None:
            one.kill()
            one.wait()
    one_log = (out / "one.log").read_text()
    assert one.returncode == 0, one_log[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert "world size 2" in two.stderr and "images/5.jpg: corrupt image" in two.stderr
    return one_log, two.stderr


def assert_same_losses(one: Path, two: Path, stage: str) -> None:
    """The runs' logged losses agree to 1e-5 relative at steps 1, 2, 3."""
    rows1, rows2 = train_rows(one), train_rows(two)
    assert [r["step"] for r in rows1] == [r["step"] for r in rows2] == [1, 2, 3]
    for r1, r2 in zip(rows1, rows2):
        for key in LOSS_KEYS[stage]:
            assert abs(r1[key] - r2[key]) <= 1e-5 * max(1.0, abs(r1[key])), (r1["step"], key, r1[key], r2[key])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_blip2")
    one_process_of_8_and_two_ranks_of_4(SCRIPT, out)
    return out


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_two_gloo_ranks_of_4_train_like_one_process_of_8(runs, stage):
    one, two = runs / "one" / stage, runs / "two" / stage
    assert_same_losses(one, two, stage)

    w1, w2 = load_file(str(one / "final.safetensors")), load_file(str(two / "final.safetensors"))
    assert set(w1) == set(w2)
    init = load_file(str(one / "initial.safetensors"))
    moved = 0
    for k in w1:
        if k.endswith("key.bias"):
            # softmax ignores a shift common to a row's scores: these gradients are exactly
            # zero, and AdamW turns their rounding noise into full steps (one process with
            # 1 vs 2 BLAS threads differs by a whole step there too)
            continue
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=2e-6, msg=k)
        moved += int((w1[k] - init[k]).abs().max() > 1e-4)
    assert moved > len(w1) // 2  # the runs did train


@torch.no_grad()
def one_process_valid_loss() -> dict[str, float]:
    model = build("stage1").eval()
    data = Pairs(VALID_SIZE, bad=())
    sums = dict.fromkeys(LOSS_KEYS["stage1"], 0.0)
    for start in range(0, VALID_SIZE, VALID_BATCH):
        batch = collate([data[i] for i in range(start, min(start + VALID_BATCH, VALID_SIZE))])
        out = model(batch)
        for k in sums:
            sums[k] += float(out[k]) * len(batch["text_input"])
    return {k: v / VALID_SIZE for k, v in sums.items()}


@pytest.mark.parametrize("world", ["one", "two"])
def test_uneven_validation_batches_give_the_one_process_loss(runs, world):
    metrics = json.loads((runs / world / "valid" / "metrics.json").read_text())
    assert metrics["world"] == {"one": 1, "two": 2}[world]
    for key, ref in one_process_valid_loss().items():
        assert abs(metrics[key] - ref) <= 1e-5 * max(1.0, abs(ref)), (key, metrics[key], ref)
