"""Small generated "own data" for the finetune tests: coloured squares with captions and
questions, written in each layout a user may have (imagefolder, JSONL, CSV, datasets)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from script_env import offline_vars, script_env

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
           "yellow": (230, 220, 30), "white": (245, 245, 245), "black": (10, 10, 10)}
QUESTION = "what colour is the square?"
# a few steps, greedy decoding of a few tokens: seconds on a CPU
FAST = ["run.max_epoch=1", "run.batch_size_train=8", "run.batch_size_eval=8", "run.warmup_steps=1",
        "run.init_lr=1e-3", "run.num_workers=0", "run.amp=false", "run.device=cpu", "run.progress_bar=false",
        "run.tensorboard=false", "run.log_freq=1"]
DECODE = ["run.num_beams=1", "run.max_len=5", "run.min_len=1"]
TINY_OPT = ["--model", "blip2_opt", "--model-type", "tiny"]
TINY_STAGE1 = ["--model", "blip2", "--model-type", "tiny"]


def write_images(folder: Path, n: int, seed: int) -> list[dict]:
    """``n`` 32 px noisy squares in ``folder``; one row each: file_name, colour, caption,
    question, answer, question_id."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows, names = [], list(COLOURS)
    for i in range(n):
        colour = names[i % len(names)]
        pixels = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 12, (32, 32, 3)), 0, 255).astype("uint8")
        name = f"img_{seed}_{i:03d}.png"
        Image.fromarray(pixels).save(folder / name)
        rows.append({"file_name": name, "colour": colour, "caption": f"a {colour} square",
                     "question": QUESTION, "answer": colour, "question_id": f"q{seed}_{i}"})
    return rows


def write_jsonl(path: Path, rows: list[dict], keys: dict[str, str]) -> Path:
    """Rows with ``keys`` renamed ``{ours: theirs}`` (other keys left out), one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps({theirs: row[ours] for ours, theirs in keys.items()}) + "\n")
    return path


def own_env(tmp: Path) -> dict:
    """The variables a run here is given on top of the caller's: outputs and caches in ``tmp``, offline."""
    return offline_vars(LAVISLIKE_OUTPUT=str(tmp / "output"), LAVISLIKE_CACHE=str(tmp / "cache"))


def env(tmp: Path) -> dict:
    return script_env(**own_env(tmp))


def finetune(cli, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """``lavislike finetune ARGS`` from ``tmp``, run in-process by the ``cli`` fixture (the
    two-process test starts the run script itself)."""
    return cli("finetune", *args, env=own_env(tmp), cwd=tmp)


def load_line(stdout: str) -> str:
    """The printed line of Python that loads the checkpoint."""
    lines = [l for l in stdout.splitlines() if l.startswith("from lavislike.models import load_model_and_preprocess")]
    assert len(lines) == 1, stdout
    return lines[0]


def reported(stdout: str) -> dict[str, float]:
    """The ``validation (...): name value, ...`` line as a dict."""
    line = next(l for l in stdout.splitlines() if l.startswith("validation ("))
    pairs = line.split("): ", 1)[1].split(", ")
    return {k: float(v) for k, v in (p.rsplit(" ", 1) for p in pairs)}


def latest_result(out: Path) -> list[dict]:
    files = sorted((out / "result").glob("val_epoch*.json"))
    assert files, list((out / "result").iterdir())
    return json.loads(files[-1].read_text())
