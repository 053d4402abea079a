"""A representative subset of the config matrix (stage 1, stage 2, retrieval, caption and VQA
evaluation) through its run script with ``NPROC=2``: torchrun, two gloo processes on the CPU,
the same tiny overrides as the one-process matrix, under DDP and (stage 1, stage 2, caption
evaluation) under FSDP. Evaluations must give exactly the one-process results (each rank
scores its shard; rank 0 gathers them)."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

import config_matrix as cm
from script_env import free_port
from lavislike.cli import main
from lavislike.config import load_config
from lavislike.tasks import caption_metrics

SUBSET = {
    "pretrain_stage1.sh": "blip2/train/pretrain_stage1.yaml",
    "pretrain_stage2.sh": "blip2/train/pretrain_stage2.yaml",
    "eval_retrieval_coco.sh": "blip2/eval/ret_coco_eval.yaml",
    "eval_nocaps.sh": "blip2/eval/caption_nocaps_eval.yaml",
    "eval_vqav2_zeroshot.sh": "blip2/eval/vqav2_zeroshot_opt_eval.yaml",
}


def _results(out, splits) -> dict:
    """Every result / metrics file of the evaluated splits, by file name."""
    files = [p for s in splits for p in sorted((out / "result").glob(f"{s}*.json"))]
    assert files, f"no results in {out / 'result'}"
    return {p.name: json.loads(p.read_text()) for p in files}


# FSDP (trainable blocks sharded) for training and for generation under summoned full weights
FSDP = ["pretrain_stage1.sh", "pretrain_stage2.sh", "eval_nocaps.sh"]
CASES = [(s, False) for s in SUBSET] + [(s, True) for s in FSDP]


@pytest.mark.parametrize("script,fsdp", CASES, ids=[s + ("-fsdp" if f else "") for s, f in CASES])
def test_two_gloo_processes(script, fsdp, matrix, tmp_path, monkeypatch, capsys, fake_venv):
    rel = SUBSET[script]
    assert f"projects/{rel}" in (cm.REPO / "run_scripts" / script).read_text()
    env = {"LAVISLIKE_CACHE": str(matrix["cache"]), "LAVISLIKE_OUTPUT": str(matrix["outputs"])}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("BLIP2_STAGE1_CKPT", raising=False)
    monkeypatch.setattr(caption_metrics, "java_available", lambda: False)
    cfg = load_config(cm.PROJECTS / rel, [])
    # METEOR's Java start-up is half a minute a process: captions are compared, not scored
    extra = ["run.report_metric=false"] if cfg.run.task == "captioning" else []
    # one sample per rank: the two-row corpora of the stage-1/2 mix still give a global batch
    extra += [] if cfg.run.evaluate else ["run.batch_size_train=1"]
    fsdp_extra = ["run.fsdp=true"] if fsdp else []

    out2 = tmp_path / "nproc2"
    script_log = tmp_path / "nproc2.log"
    with open(script_log, "w") as err:
        proc = subprocess.Popen(
            ["bash", f"run_scripts/{script}", *cm.overrides(cfg, out2, matrix), *extra, *fsdp_extra],
            stdout=err, stderr=err, cwd=cm.REPO, start_new_session=True,
            env=dict(os.environ, **env, NPROC=cm.NPROC, MASTER_PORT=str(free_port()),
                     LAVISLIKE_VENV=str(fake_venv), PYTHONPATH=str(cm.REPO), OMP_NUM_THREADS="1",
                     HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false"),
        )
    try:
        out1 = tmp_path / "nproc1"
        if cfg.run.evaluate:  # the one-process reference, in this process while the two ranks run
            rc1 = main(["evaluate", "--cfg-path", str(cm.PROJECTS / rel), *cm.overrides(cfg, out1, matrix), *extra])
            assert rc1 == 0, capsys.readouterr().err[-3000:]
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:  # the launcher and the ranks it started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, script_log.read_text()[-3000:]
    log = (out2 / "log.txt").read_text()
    assert f"world size {cm.NPROC}" in log and ("FSDP:" in log) == fsdp, log[-2000:]
    if not cfg.run.evaluate:
        rows = [json.loads(line) for line in (out2 / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if r.get("split") == "train"] == [1, 2]
        assert all(r["loss"] == r["loss"] for r in rows if "loss" in r)  # not NaN
        return
    assert _results(out2, cfg.run.test_splits) == _results(out1, cfg.run.test_splits)
