"""Every YAML under projects/ runs end to end through the real CLI (``lavislike train`` /
``lavislike evaluate``) for a couple of steps at tiny size: same task, runner, processors,
builders and model class, the model shrunk and the data replaced by small files in each
corpus's own format (see ``config_matrix.py``). A new YAML is picked up by the glob; one
whose dataset has no fixture fails here with its name."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

import config_matrix as cm
from lavislike.cli import main
from lavislike.config import load_config
from lavislike.tasks import caption_metrics

PROJECTS = cm.PROJECTS
ALL_YAMLS = cm.ALL_YAMLS


def _finite_losses(metrics: Path) -> list[float]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses and all(math.isfinite(v) for v in losses), rows
    return losses


@pytest.mark.parametrize("path", ALL_YAMLS, ids=[str(p.relative_to(PROJECTS)) for p in ALL_YAMLS])
def test_project_yaml_runs_end_to_end(path, matrix, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAVISLIKE_CACHE", str(matrix["cache"]))
    monkeypatch.setenv("LAVISLIKE_OUTPUT", str(matrix["outputs"]))
    monkeypatch.delenv("BLIP2_STAGE1_CKPT", raising=False)
    # METEOR's and the PTB tokenizer's Java start-up is half a minute; tests/tasks covers them
    monkeypatch.setattr(caption_metrics, "java_available", lambda: False)
    cfg = load_config(path, [])
    missing = [name for name in cfg.datasets if cm.writer_for(name) is None]
    assert not missing, (f"{path.relative_to(cm.REPO)}: no test fixture writes dataset(s) {missing}; "
                         "add a writer to tests/datasets/fixtures/real_formats.py")
    out = tmp_path / "run"
    command = "evaluate" if cfg.run.evaluate else "train"
    t0 = time.perf_counter()
    rc = main([command, "--cfg-path", str(path), *cm.overrides(cfg, out, matrix)])
    err = capsys.readouterr().err
    assert rc == 0, err[-3000:]
    print(f"{path.relative_to(PROJECTS)}: {command} in {time.perf_counter() - t0:.1f} s")
    if command == "train":
        _finite_losses(out / "metrics.jsonl")
        assert list((out / "checkpoints").rglob("model.safetensors")) or list(out.glob("*.safetensors"))
    for split in cfg.run.test_splits if command == "evaluate" else []:
        results = list((out / "result").glob(f"{split}*.json"))
        assert results, f"no {split} results in {out / 'result'}"
