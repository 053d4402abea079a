"""A config mistake under ``NPROC=2`` is one line and exit status 2 from the run script,
checked before torchrun starts any worker (``lavislike train --check-config``)."""
from __future__ import annotations

import re
import subprocess

import pytest

from lavislike.cli import main

from script_env import REPO, free_port, script_env
STAGE1 = "projects/blip2_tiny/train/pretrain_stage1.yaml"


def _script(fake_venv, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    env = script_env(NPROC="2", LAVISLIKE_VENV=str(fake_venv), MASTER_PORT=str(free_port()))
    res = subprocess.run(["bash", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    return res, [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]


def test_bad_key_with_two_processes_is_one_line(fake_venv):
    res, lines = _script(fake_venv, "run_scripts/pretrain_stage1.sh", STAGE1, "run.init_lrr=1e-4")
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(lines) == 1 and lines[0].startswith("lavislike train: error: command line: key 'run.init_lrr'"), lines
    assert "'init_lr'" in lines[0] and "torchrun" not in res.stderr


# every script that runs a project YAML through _torchrun.sh, a new one included: the YAML
# reaches the CLI and is checked before workers start (the YAMLs themselves run in
# tests/projects' config matrix; finetune.sh has its own tests)
RUNS = {p.name: m.group(1) for p in sorted((REPO / "run_scripts").glob("*.sh"))
        if (m := re.search(r"^lavislike_torchrun (train|evaluate) projects/", p.read_text(), re.M))}


@pytest.mark.parametrize("script", RUNS)
def test_every_run_script_reads_its_config_and_checks_it_first(script, fake_venv):
    command = RUNS[script]
    res, lines = _script(fake_venv, f"run_scripts/{script}", "run.init_lrr=1e-4")
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(lines) == 1 and lines[0].startswith(f"lavislike {command}: error: command line: key 'run.init_lrr'"), lines


@pytest.mark.parametrize("override, expected", [
    ("model.model_type=pretrian", "Did you mean 'pretrain'?"),
    ("datasets.synthetic_retrieval.vis_processor.train.name=blip_image_trian",
     "datasets.synthetic_retrieval.vis_processor.train: unknown processor 'blip_image_trian'"),
    ("run.output_dir=${oc.env:LAVISLIKE_TEST_SURELY_UNSET}", "LAVISLIKE_TEST_SURELY_UNSET"),
])
def test_check_config_finds_what_workers_would(override, expected, capsys):
    assert main(["train", "--check-config", "--cfg-path", str(REPO / STAGE1), override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_check_config_passes_a_good_config(capsys, tmp_path):
    assert main(["evaluate", "--check-config", "--cfg-path", str(REPO / "projects/blip2/eval/ret_coco_eval.yaml"),
                 f"run.output_dir={tmp_path / 'out'}"]) == 0
    assert not (tmp_path / "out").exists()  # nothing ran
