"""The command-line paths a user takes, end to end on the synthetic corpus at CPU size:
train (outputs), kill -9 + resume (same weights as an uninterrupted run), evaluate,
convert, and a run script under torchrun with two processes (gloo)."""
from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from script_env import REPO, free_port, script_env
N_TRAIN, N_VAL, N_TEST = 16, 8, 8


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """LAVISLIKE_CACHE holding a small synthetic corpus (generated once for the module)."""
    from lavislike.datasets.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("cache")
    make_synthetic(root / "synthetic", seed=0, n_train=N_TRAIN, n_val=N_VAL, n_test=N_TEST, image_size=32,
                   with_video=False)
    return root


def env_for(cache: Path) -> dict:
    return script_env(LAVISLIKE_CACHE=str(cache))


def lavislike(cache: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """``lavislike ARGS`` in a fresh process: where a run is killed or compared with a killed
    one (same process set-up), or could hang; the other tests run ``main`` in-process."""
    return subprocess.run([sys.executable, "-m", "lavislike", *args], capture_output=True, text=True,
                          env=env_for(cache), cwd=REPO, timeout=timeout)


class Started:
    """``lavislike ARGS`` started in a fresh process that runs on while the test goes on (an
    uninterrupted reference run beside the killed one: a 2-core machine runs both at once);
    ``result()`` waits for it, ``stop()`` ends it if the test failed first."""

    def __init__(self, cache: Path, log: Path, *args: str):
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "lavislike", *args], cwd=REPO, env=env_for(cache),
                                         stdout=subprocess.DEVNULL, stderr=err)

    def result(self, timeout: int = 300) -> subprocess.CompletedProcess:
        self.proc.wait(timeout=timeout)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, "", self.log.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start(cache):
    """``start(log, *args)``: a :class:`Started` run, ended at teardown if still running."""
    started = []

    def run(log: Path, *args: str) -> Started:
        started.append(Started(cache, log, *args))
        return started[-1]

    yield run
    for s in started:
        s.stop()


def in_process(cli, cache: Path, *args: str) -> subprocess.CompletedProcess:
    """``lavislike ARGS`` by its ``main`` (the ``cli`` fixture), reading the corpus in ``cache``."""
    return cli(*args, env={"LAVISLIKE_CACHE": str(cache)}, cwd=REPO)


def synthetic_block(kind: str, train_processor: str = "blip_image_eval") -> dict:
    # the options pin the corpus the fixture made (a mismatch would regenerate it)
    return {f"synthetic_{kind}": {
        "seed": 0, "n_train": N_TRAIN, "n_val": N_VAL, "n_test": N_TEST, "image_size": 32, "with_video": False,
        "vis_processor": {"train": {"name": train_processor, "image_size": 32},
                          "eval": {"name": "blip_image_eval", "image_size": 32}}}}


def stage1_config(path: Path, output_dir: Path, train_processor: str = "blip_image_eval", **run) -> Path:
    """A tiny stage-1 experiment YAML (32 captions, batch 8: 4 steps per epoch) written to ``path``."""
    cfg = {
        "model": {"arch": "blip2", "model_type": "tiny"},
        "datasets": synthetic_block("retrieval", train_processor),
        "run": {"task": "image_text_pretrain", "runner": "runner_base", "max_epoch": 1, "batch_size_train": 8,
                "batch_size_eval": 8, "init_lr": 1e-3, "warmup_steps": 2, "k_test": 4,
                "output_dir": str(output_dir), "device": "cpu", "progress_bar": False, "tensorboard": False,
                "log_freq": 1, **run},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    latest = (output_dir / "checkpoints" / "latest").read_text().strip()
    return load_file(str(output_dir / "checkpoints" / latest / "model.safetensors"))


def test_train_writes_the_output_folder(cache, tmp_path, cli):
    out = tmp_path / "run"
    cfg = stage1_config(tmp_path / "exp.yaml", out)
    res = in_process(cli, cache, "train", "--cfg-path", str(cfg), "run.init_lr=5e-4")
    assert res.returncode == 0, res.stderr[-3000:]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    # resolved: the command-line override, the schema defaults and the model type's keys
    assert saved["run"]["init_lr"] == 5e-4 and saved["run"]["beta2"] == 0.999
    assert saved["model"]["qformer"]["num_query_token"] == 4 and "${" not in (out / "config.yaml").read_text()
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all({"loss", "loss_itc", "loss_itm", "loss_lm", "lr"} <= set(r) for r in train)
    weights = final_weights(out)
    assert "qformer.query_tokens" in weights and not any(k.startswith("image_encoder.") for k in weights)
    assert (out / "checkpoints" / "step_000000004" / "meta.json").is_file()


def kill_after_first_checkpoint(cache: Path, cfg: Path, out: Path) -> int:
    """Start ``lavislike train``, SIGKILL it once a checkpoint exists; the step it holds."""
    proc = subprocess.Popen([sys.executable, "-m", "lavislike", "train", "--cfg-path", str(cfg)], cwd=REPO,
                            env=env_for(cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while not latest.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
    return int(latest.read_text().strip().split("_")[1])


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("processor, workers", [("blip_image_eval", 0), ("blip_image_train", 2)])
def test_killed_run_resumes_to_the_same_weights(cache, tmp_path, start, processor, workers):
    """kill -9 after the first checkpoint (mid-epoch), resume in the same folder: the final
    trainable weights equal an uninterrupted run's bit for bit - also with random crops and
    RandAugment loaded by two DataLoader workers (batches land on other workers after the
    resume; each sample's augmentation must not depend on which)."""
    run = {"max_epoch": 2, "ckpt_every_steps": 1, "keep_last_checkpoints": 20, "num_workers": workers}
    full = tmp_path / "full"
    full_run = start(tmp_path / "full.log", "train", "--cfg-path",
                     str(stage1_config(tmp_path / "full.yaml", full, processor, **run)))

    cut = tmp_path / "cut"
    cfg = stage1_config(tmp_path / "cut.yaml", cut, processor, **run)
    killed_at = kill_after_first_checkpoint(cache, cfg, cut)
    assert 1 <= killed_at < 8  # 2 epochs x 4 steps: killed mid-run

    res = lavislike(cache, "train", "--cfg-path", str(cfg), "run.resume=true", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"global step {killed_at}" in res.stderr or f"step_{killed_at:09d}" in res.stderr
    assert (cut / "checkpoints" / "step_000000008").is_dir()
    res = full_run.result(timeout=300)  # generous: a loaded 2-core CI
    assert res.returncode == 0, res.stderr[-3000:]
    a = final_weights(full)
    assert_same_weights(a, final_weights(cut))
    # and training did move the weights (a resume that reloads the same file proves nothing)
    first = load_file(str(full / "checkpoints" / "step_000000001" / "model.safetensors"))
    assert not torch.equal(first["qformer.query_tokens"], a["qformer.query_tokens"])


def write_shards(root: Path, n_shards: int = 3, per_shard: int = 7) -> str:
    """Webdataset shards of noise JPEGs with two candidate captions each; returns the pattern."""
    import webdataset as wds
    from PIL import Image

    folder = root / "laion" / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as sink:
            for i in range(per_shard):
                pixels = np.random.default_rng(s * 100 + i).integers(0, 256, (24, 24, 3), dtype=np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="JPEG")
                sink.write({"__key__": f"{s:05d}{i:04d}", "jpg": buf.getvalue(),
                            "json": {"caption": [f"thing {s} {i}", f"a photo of item {i} in {s}"]}})
    return f"laion/shards/{{00000..{n_shards - 1:05d}}}.tar"


@pytest.mark.parametrize("resampled", [True, False])
def test_killed_stream_run_resumes_to_the_same_weights(cache, tmp_path, start, resampled):
    """The same on LAION webdataset shards read by two workers (random crops, a random caption
    of two per sample, shuffle buffer, and with resampled: false an epoch end mid-run):
    resuming after kill -9 gives the uninterrupted run's weights."""
    pattern = write_shards(cache)

    def config(name: str) -> Path:
        cfg = yaml.safe_load(stage1_config(tmp_path / f"{name}.yaml", tmp_path / name).read_text())
        cfg["datasets"] = {"laion": {"build_info": {"storage": pattern}, "resampled": resampled, "shuffle_buffer": 4,
                                     "vis_processor": {"train": {"name": "blip2_image_train", "image_size": 32},
                                                       "eval": {"name": "blip_image_eval", "image_size": 32}}}}
        cfg["run"].update(runner="runner_iter", max_iters=6, iters_per_inner_epoch=6, batch_size_train=4,
                          ckpt_every_steps=1, keep_last_checkpoints=20, num_workers=2)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        return tmp_path / f"{name}.yaml"

    full = tmp_path / "full"
    full_run = start(tmp_path / "full.log", "train", "--cfg-path", str(config("full")))
    cut = tmp_path / "cut"
    cfg = config("cut")
    killed_at = kill_after_first_checkpoint(cache, cfg, cut)
    assert 1 <= killed_at < 6
    res = lavislike(cache, "train", "--cfg-path", str(cfg), "run.resume=true", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    res = full_run.result(timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_weights(final_weights(full), final_weights(cut))
    assert "skipping" not in res.stderr  # no batch was read again


def test_evaluate_retrieval_prints_and_writes_recall(cache, tmp_path, cli):
    out = tmp_path / "eval"
    cfg = {
        "model": {"arch": "blip2", "model_type": "tiny"},
        "datasets": synthetic_block("retrieval"),
        "run": {"task": "retrieval", "k_test": 4, "batch_size_eval": 8, "test_splits": ["test"],
                "output_dir": str(out), "device": "cpu", "progress_bar": False, "tensorboard": False},
    }
    (tmp_path / "ret.yaml").write_text(yaml.safe_dump(cfg))
    res = in_process(cli, cache, "evaluate", "--cfg-path", str(tmp_path / "ret.yaml"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "txt_r1" in res.stderr and "img_r10" in res.stderr
    written = sorted((out / "result").glob("test*_retrieval.json"))
    assert len(written) == 1
    line = json.loads(written[0].read_text())
    recalls = [line[f"{d}_r{k}"] for d in ("txt", "img") for k in (1, 5, 10)]
    assert all(0 <= r <= 100 for r in recalls)
    # 8 images / 16 captions: recall is a whole number of queries
    assert all(abs(line[f"img_r{k}"] * 16 / 100 - round(line[f"img_r{k}"] * 16 / 100)) < 1e-6 for k in (1, 5, 10))
    assert all(abs(line[f"txt_r{k}"] * 8 / 100 - round(line[f"txt_r{k}"] * 8 / 100)) < 1e-6 for k in (1, 5, 10))
    assert line["r_mean"] == pytest.approx(sum(recalls) / 6)
    assert line["txt_r1"] <= line["txt_r5"] <= line["txt_r10"] and line["img_r1"] <= line["img_r5"] <= line["img_r10"]
    assert not (out / "checkpoints").exists()  # evaluation trains nothing


def test_train_initialises_stage2_from_a_stage1_checkpoint(cache, tmp_path, cli):
    """`model.pretrained` names what `lavislike train` builds: a runner-written stage-1
    file (trainable weights only) gives the stage-2 model its Q-Former."""
    from omegaconf import OmegaConf

    from lavislike.config import load_config
    from lavislike.tasks import setup_task

    stage1 = tmp_path / "s1"
    res = in_process(cli, cache, "train", "--cfg-path", str(stage1_config(tmp_path / "s1.yaml", stage1)))
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = stage1 / "checkpoints" / "step_000000004" / "model.safetensors"
    exp = {"model": {"arch": "blip2_opt", "model_type": "tiny", "load_pretrained": True, "pretrained": str(ckpt)},
           "datasets": synthetic_block("caption"), "run": {"task": "image_text_pretrain"}}
    (tmp_path / "s2.yaml").write_text(yaml.safe_dump(exp))
    cfg = load_config(tmp_path / "s2.yaml", [])
    model = setup_task(cfg).build_model(cfg)
    saved, own = load_file(str(ckpt)), model.state_dict()
    shared = [k for k in saved if k in own]
    assert "qformer.query_tokens" in shared and len(shared) > 20
    for key in shared:
        assert torch.equal(own[key], saved[key]), key
    assert "itm_head.weight" not in own  # the stage-1 heads were dropped, not loaded
    assert OmegaConf.select(cfg, "model.pretrained") == str(ckpt)


def test_convert_lavis_pth_to_ours_to_hf(cache, tmp_path, cli):
    from transformers import Blip2ForImageTextRetrieval

    from lavislike.models import load_model
    from lavislike.models.convert.lavis import to_lavis_state

    torch.manual_seed(0)
    model = load_model("blip2", "tiny", load_pretrained=False)
    torch.save({"model": to_lavis_state(model)}, tmp_path / "blip2_tiny.pth")
    res = in_process(cli, cache, "convert", str(tmp_path / "blip2_tiny.pth"), str(tmp_path / "ours"),
                     "--arch", "blip2", "--model-type", "tiny")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "ours" / "model.safetensors").is_file()
    res = in_process(cli, cache, "convert", str(tmp_path / "ours"), str(tmp_path / "hf"), "--to", "hf")
    assert res.returncode == 0, res.stderr[-3000:]
    hf = Blip2ForImageTextRetrieval.from_pretrained(str(tmp_path / "hf"))
    ours = model.state_dict()
    # transformers reads the tensors under its own names
    torch.testing.assert_close(hf.query_tokens, ours["qformer.query_tokens"])
    torch.testing.assert_close(hf.vision_projection.weight, ours["vision_proj.weight"])
    torch.testing.assert_close(hf.text_projection.weight, ours["text_proj.weight"])
    torch.testing.assert_close(hf.itm_head.weight, ours["itm_head.weight"])


def test_convert_bad_input_is_one_line(cache, tmp_path, cli):
    (tmp_path / "x.pth").write_bytes(b"")
    res = in_process(cli, cache, "convert", str(tmp_path / "x.pth"), str(tmp_path / "o"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "--arch" in res.stderr


def test_pretrain_stage1_script_with_two_processes(cache, tmp_path, fake_venv):
    """`NPROC=2 bash run_scripts/pretrain_stage1.sh <yaml> a.b=c`: torchrun, gloo on CPU,
    the config argument and the overrides passed through."""
    out = tmp_path / "ddp"
    cfg = stage1_config(tmp_path / "ddp.yaml", out)
    env = dict(env_for(cache), NPROC="2", MASTER_PORT=str(free_port()),
               LAVISLIKE_VENV=str(fake_venv))
    res = subprocess.run(["bash", "run_scripts/pretrain_stage1.sh", str(cfg), "run.max_epoch=2"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "world size 2" in (out / "log.txt").read_text()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["run"]["max_epoch"] == 2
    # 32 captions, 2 ranks x 8 per step: 2 steps per epoch, 2 epochs
    assert (out / "checkpoints" / "step_000000004").is_dir()
    train = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train if r["split"] == "train"] == [1, 2, 3, 4]


def test_every_sample_bad_stops_with_one_line(cache, tmp_path):
    """A media folder that exists but holds none of the corpus's images makes every sample
    bad: the run must stop at once (exit 2, one line naming the dataset, a file and the
    reason), not draw replacement batches forever."""
    (cache / "synthetic" / "elsewhere").mkdir(exist_ok=True)
    cfg = stage1_config(tmp_path / "exp.yaml", tmp_path / "out", runner="runner_iter", max_iters=4)
    res = lavislike(cache, "train", "--cfg-path", str(cfg),
                    f"datasets.synthetic_retrieval.build_info.images.storage={cache}/synthetic/elsewhere", timeout=60)
    assert res.returncode == 2, res.stderr[-3000:]
    lines = [l for l in res.stderr.splitlines() if l.strip() and " INFO " not in l and " WARNING " not in l]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "synthetic_retrieval/train" in lines[0] and "missing file" in lines[0]
    assert f"{cache}/synthetic/elsewhere/" in lines[0] and "batches in a row" in lines[0]
