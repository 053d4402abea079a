"""`lavislike train run.resume=true` on the tiny BLIP-2 with a truncated newest checkpoint:
a warning names the file, the run resumes from the checkpoint before and ends with the
weights of an uninterrupted run."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_e2e import cache, final_weights, in_process, stage1_config  # noqa: E402,F401 (cache: fixture)


def test_truncated_newest_checkpoint_resumes_from_the_one_before(cache, tmp_path, cli):
    run = {"ckpt_every_steps": 1, "keep_last_checkpoints": 10}
    full = tmp_path / "full"
    res = in_process(cli, cache, "train", "--cfg-path", str(stage1_config(tmp_path / "full.yaml", full, **run)))
    assert res.returncode == 0, res.stderr[-3000:]

    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    bad = cut / "checkpoints" / "step_000000004" / "training_state.pt"
    bad.write_bytes(bad.read_bytes()[:100])
    res = in_process(cli, cache, "train", "--cfg-path", str(stage1_config(tmp_path / "cut.yaml", cut, **run)),
                     "run.resume=true")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert f"skipping damaged checkpoint step_000000004: {bad}: unreadable" in res.stderr
    assert f"resumed from {cut / 'checkpoints' / 'step_000000003'}" in res.stderr
    a, b = final_weights(full), final_weights(cut)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
