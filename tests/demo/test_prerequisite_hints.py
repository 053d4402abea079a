"""A missing prerequisite of a tiny project: one line naming the path, the config key and
the command that creates it; exit status 2 from the CLI and from the run scripts."""
from __future__ import annotations

import subprocess
from pathlib import Path

from lavislike.common.paths import missing_hint

from script_env import REPO, script_env
PREPARE = "python -m lavislike_demo prepare"
STAGE1_CMD = "python -m lavislike_demo prepare stage1"
STAGE2_CMD = "bash run_scripts/pretrain_stage2.sh projects/blip2_tiny/train/pretrain_stage2.yaml"


def run(args: list[str], cache: Path, out: Path, **extra_env) -> subprocess.CompletedProcess:
    env = script_env(LAVISLIKE_CACHE=str(cache), LAVISLIKE_OUTPUT=str(out), **extra_env)
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def one_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [l for l in (res.stdout + res.stderr).splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stdout + res.stderr
    return lines[0]


def test_hints_for_demo_cache_entries_and_tiny_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("LAVISLIKE_CACHE", str(tmp_path / "cache"))
    demo = tmp_path / "cache" / "demo"
    assert missing_hint(demo / "opt_tiny") == PREPARE
    assert missing_hint(demo / "synthetic" / "annotations" / "caption_train.json") == PREPARE
    assert missing_hint(demo / "t5_tiny") == "python -m lavislike_demo prepare t5"
    assert missing_hint(tmp_path / "cache" / "coco" / "images") is None
    run_dir = tmp_path / "anywhere" / "blip2_tiny"
    assert missing_hint(run_dir / "pretrain_stage1" / "model_best.safetensors").startswith(STAGE1_CMD)
    assert "run_scripts/pretrain_stage1.sh" in missing_hint(run_dir / "pretrain_stage1" / "model_best.safetensors")
    assert missing_hint(run_dir / "pretrain_stage2" / "model_best.safetensors") == STAGE2_CMD
    assert missing_hint(tmp_path / "blip2" / "pretrain_stage2" / "model_best.safetensors") is None


def in_process(cli, args: list[str], cache: Path, out: Path) -> subprocess.CompletedProcess:
    """``lavislike ARGS`` by its ``main`` (the ``cli`` fixture), with ``run``'s cache and outputs."""
    return cli(*args, env={"LAVISLIKE_CACHE": str(cache), "LAVISLIKE_OUTPUT": str(out)}, cwd=REPO)


def test_cli_names_the_stage1_weights_then_the_prepared_llm(tmp_path, cli):
    cache, out = tmp_path / "cache", tmp_path / "out"
    cmd = ["train", "--cfg-path", "projects/blip2_tiny/train/pretrain_stage2.yaml"]
    line = one_line(in_process(cli, cmd, cache, out))
    weights = out / "blip2_tiny" / "pretrain_stage1" / "model_best.safetensors"
    assert f"model.pretrained: {weights} not found" in line and STAGE1_CMD in line

    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")  # present: the next missing piece is the frozen LLM
    line = one_line(in_process(cli, cmd, cache, out))
    assert line.endswith(f"model.llm.path: {cache / 'demo' / 'opt_tiny'} not found; create it with: {PREPARE}")


def test_cli_names_the_image_encoder_of_stage1(tmp_path, cli):
    cache, out = tmp_path / "cache", tmp_path / "out"
    line = one_line(in_process(cli, ["train", "--cfg-path", "projects/blip2_tiny/train/pretrain_stage1.yaml"],
                               cache, out))
    encoder = cache / "demo" / "vision_encoder.safetensors"
    assert line.endswith(f"model.image_encoder.pretrained: {encoder} not found; create it with: {PREPARE}")


def test_eval_script_names_the_stage2_training_command(tmp_path, fake_venv):
    cache, out = tmp_path / "cache", tmp_path / "out"
    res = run(["bash", "run_scripts/eval_vqav2_zeroshot.sh", "projects/blip2_tiny/eval/vqa_synthetic_zeroshot_eval.yaml"],
              cache, out, LAVISLIKE_VENV=str(fake_venv), NPROC="1")
    line = one_line(res)
    weights = out / "blip2_tiny" / "pretrain_stage2" / "model_best.safetensors"
    assert line == f"lavislike evaluate: error: model.pretrained: {weights} not found; create it with: {STAGE2_CMD}"
