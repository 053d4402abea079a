"""`lavislike finetune` end to end on generated own data, one run per layout (imagefolder,
JSONL, CSV, a saved `datasets` dataset), with the tiny models: it trains, reports the
task's metric on the validation split, and the line it prints loads the trained model."""
from __future__ import annotations

import csv
import json
import re
import subprocess

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from own_files import (
    DECODE, FAST, QUESTION, TINY_OPT, TINY_STAGE1, env, finetune, latest_result, load_line, reported,
    write_images, write_jsonl,
)
from script_env import REPO, free_port


def train_steps(out) -> list[int]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["split"] == "train"]


def run_printed_line(stdout: str) -> dict:
    scope: dict = {}
    exec(load_line(stdout), scope)  # what the user pastes
    return scope


def assert_trained_weights_loaded(model, out) -> None:
    """The loaded model holds the best weights the run kept (read here with safetensors)."""
    best = load_file(str(out / "model_best.safetensors"))
    own = model.state_dict()
    assert best and set(best) <= set(own)
    for key, value in best.items():
        assert torch.equal(own[key], value), key


def vqa_accuracy(results: list[dict], truth: dict[str, str]) -> float:
    """VQA accuracy with one answer per question (10 identical annotators): exact match
    after the official light normalisation (lower case, no articles / punctuation)."""
    def norm(text: str) -> str:
        words = re.sub(r"[^\w\s]", "", text.lower()).split()
        return " ".join(w for w in words if w not in ("a", "an", "the"))

    return 100.0 * sum(norm(r["answer"]) == truth[r["question_id"]] for r in results) / len(results)


def test_caption_imagefolder_trains_validates_and_the_printed_line_captions(tmp_path, cli):
    """Split subfolders train/ + validation/ with metadata.jsonl (file_name, text)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    data = tmp_path / "pets"
    train, val = write_images(data / "train", 24, seed=0), write_images(data / "validation", 6, seed=1)
    for folder, rows in (("train", train), ("validation", val)):
        write_jsonl(data / folder / "metadata.jsonl", rows, {"file_name": "file_name", "caption": "text"})
    out = tmp_path / "run"
    res = finetune(cli, tmp_path, "--task", "captioning", "--data", str(data), *TINY_OPT, "--output", str(out),
                   *FAST, *DECODE)
    assert res.returncode == 0, res.stderr[-3000:]
    exp = yaml.safe_load((out / "finetune.yaml").read_text())
    assert exp["datasets"]["own_caption"]["data"] == str(data)
    # the paper's caption recipe (projects/blip2/train/caption_coco_ft.yaml), overrides on top
    assert exp["run"]["weight_decay"] == 0.05 and exp["run"]["lr_sched"] == "linear_warmup_cosine_lr"
    assert exp["model"]["prompt"] == "a photo of" and exp["run"]["max_epoch"] == 1
    assert train_steps(out) == [1, 2, 3]  # 24 images, batch 8

    # the validation metric: pycocoevalcap on the generated captions against our 6 captions
    results = latest_result(out)
    assert sorted(r["image_id"] for r in results) == list(range(6))
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": row["caption"]}] for i, row in enumerate(val)})
    gen = tok.tokenize({r["image_id"]: [{"caption": r["caption"]}] for r in results})
    bleu, _ = Bleu(4).compute_score(gts, gen)
    cider, _ = Cider().compute_score(gts, gen)
    metrics = reported(res.stdout)
    assert metrics["Bleu_4"] == pytest.approx(bleu[3], abs=1e-4)
    assert metrics["CIDEr"] == pytest.approx(cider, abs=1e-4)

    scope = run_printed_line(res.stdout)
    model, vis = scope["model"], scope["vis_processors"]
    assert_trained_weights_loaded(model, out)
    image = vis["eval"](Image.open(data / "validation" / val[0]["file_name"]).convert("RGB")).unsqueeze(0)
    caption = model.generate({"image": image}, num_beams=1, max_length=5, min_length=1)
    assert caption == [next(r["caption"] for r in results if r["image_id"] == 0)]


def test_vqa_imagefolder_split_by_ratio_and_the_printed_line_answers(tmp_path, cli):
    """One folder, metadata.jsonl with questions and answers; val = a seeded quarter of it."""
    data = tmp_path / "qa"
    rows = write_images(data, 32, seed=2)
    keys = {k: k for k in ("file_name", "question", "answer", "question_id")}
    write_jsonl(data / "metadata.jsonl", rows, keys)
    out = tmp_path / "run"
    res = finetune(cli, tmp_path, "--task", "vqa", "--data", str(data), *TINY_OPT, "--output", str(out), *FAST, *DECODE,
                   "datasets.own_vqa.val_ratio=0.25")
    assert res.returncode == 0, res.stderr[-3000:]
    assert train_steps(out) == [1, 2, 3]  # 24 of 32 images for training, batch 8
    results = latest_result(out)
    truth = {r["question_id"]: r["answer"] for r in rows}
    assert len(results) == 8 and {r["question_id"] for r in results} <= set(truth)
    assert reported(res.stdout)["accuracy"] == pytest.approx(vqa_accuracy(results, truth), abs=1e-6)

    scope = run_printed_line(res.stdout)
    model, vis = scope["model"], scope["vis_processors"]
    assert_trained_weights_loaded(model, out)
    first = results[0]
    row = next(r for r in rows if r["question_id"] == first["question_id"])
    image = vis["eval"](Image.open(data / row["file_name"]).convert("RGB")).unsqueeze(0)
    exp = yaml.safe_load((out / "finetune.yaml").read_text())["run"]
    answer = model.predict_answers({"image": image, "text_input": [QUESTION]}, num_beams=1, max_len=5, min_len=1,
                                   prompt=exp["prompt"], length_penalty=exp["length_penalty"])
    assert answer == [first["answer"]]


def test_retrieval_jsonl_with_images_root_val_file_and_a_bad_row(tmp_path, cli):
    """JSONL rows with paths relative to --images, own column names, one bad row reported."""
    images = tmp_path / "photos"
    train, val = write_images(images, 16, seed=3), write_images(images, 6, seed=4)
    train_file = write_jsonl(tmp_path / "ann" / "train.jsonl", train, {"file_name": "path", "caption": "sentence"})
    with open(train_file, "a") as fh:
        fh.write(json.dumps({"path": train[0]["file_name"], "sentence": ""}) + "\n")  # line 17: empty caption
    val_file = write_jsonl(tmp_path / "ann" / "val.jsonl", val, {"file_name": "path", "caption": "sentence"})
    out = tmp_path / "run"
    res = finetune(cli, tmp_path, "--task", "retrieval", "--data", str(train_file), "--val", str(val_file),
                   "--images", str(images), *TINY_STAGE1, "--output", str(out), *FAST, "run.k_test=4",
                   "datasets.own_retrieval.columns.image=path")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{train_file} line 17: missing field 'caption'" in res.stderr
    assert train_steps(out) == [1, 2]  # 16 good rows, batch 8
    metrics = reported(res.stdout)
    for kind, n in (("txt", 6), ("img", 6)):  # 6 images, 6 captions: recall is a whole number of queries
        for k in (1, 5):
            assert abs(metrics[f"{kind}_r{k}"] * n / 100 - round(metrics[f"{kind}_r{k}"] * n / 100)) < 1e-3  # printed to 4 decimals
        assert metrics[f"{kind}_r10"] == 100.0  # 6 candidates
    model = run_printed_line(res.stdout)["model"]
    assert_trained_weights_loaded(model, out)


def test_vqa_csv_with_absolute_paths_and_a_renamed_column(tmp_path, cli):
    images = tmp_path / "img"
    rows = write_images(images, 24, seed=5) + write_images(images, 8, seed=6)
    files = {}
    for name, part in (("train", rows[:24]), ("val", rows[24:])):
        files[name] = tmp_path / f"{name}.csv"
        with open(files[name], "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "question", "reply", "question_id"])
            for r in part:
                w.writerow([str(images / r["file_name"]), r["question"], r["answer"], r["question_id"]])
    out = tmp_path / "run"
    res = finetune(cli, tmp_path, "--task", "vqa", "--data", str(files["train"]), "--val", str(files["val"]), *TINY_OPT,
                   "--output", str(out), *FAST, *DECODE, "datasets.own_vqa.columns.answer=reply")
    assert res.returncode == 0, res.stderr[-3000:]
    assert train_steps(out) == [1, 2, 3]
    results = latest_result(out)
    truth = {r["question_id"]: r["answer"] for r in rows[24:]}
    assert {r["question_id"] for r in results} == set(truth)
    assert reported(res.stdout)["accuracy"] == pytest.approx(vqa_accuracy(results, truth), abs=1e-6)
    assert_trained_weights_loaded(run_printed_line(res.stdout)["model"], out)


def test_retrieval_saved_datasets_dict(tmp_path, cli):
    """A DatasetDict (train / validation) with an Image column, written with save_to_disk."""
    datasets = pytest.importorskip("datasets")
    parts = {"train": write_images(tmp_path / "src", 16, seed=7), "validation": write_images(tmp_path / "src", 6, seed=8)}
    dd = datasets.DatasetDict({
        split: datasets.Dataset.from_dict({
            "image": [Image.open(tmp_path / "src" / r["file_name"]) for r in rows],
            "text": [r["caption"] for r in rows],
        }).cast_column("image", datasets.Image())
        for split, rows in parts.items()
    })
    dd.save_to_disk(str(tmp_path / "saved"))
    for r in parts["train"] + parts["validation"]:  # the images live inside the saved dataset only
        (tmp_path / "src" / r["file_name"]).unlink()
    out = tmp_path / "run"
    res = finetune(cli, tmp_path, "--task", "retrieval", "--data", str(tmp_path / "saved"), *TINY_STAGE1,
                   "--output", str(out), *FAST, "run.k_test=4")
    assert res.returncode == 0, res.stderr[-3000:]
    assert train_steps(out) == [1, 2]
    assert reported(res.stdout)["txt_r10"] == 100.0
    assert_trained_weights_loaded(run_printed_line(res.stdout)["model"], out)


def test_wrong_column_is_one_line_naming_the_file_and_its_columns(tmp_path, cli):
    rows = write_images(tmp_path / "img", 4, seed=9)
    path = tmp_path / "data.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "description"])
        w.writerows([[str(tmp_path / "img" / r["file_name"]), r["caption"]] for r in rows])
    res = finetune(cli, tmp_path, "--task", "captioning", "--data", str(path), *TINY_OPT, *FAST,
                   "datasets.own_caption.columns.caption=descripton")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert str(path) in res.stderr and "image, description" in res.stderr and "'description'" in res.stderr
    # no column configured and none of the usual names either
    res = finetune(cli, tmp_path, "--task", "captioning", "--data", str(path), *TINY_OPT, *FAST)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert str(path) in res.stderr and "image, description" in res.stderr


def test_dry_run_prints_the_yaml_only(tmp_path, cli):
    res = finetune(cli, tmp_path, "--task", "vqa", "--data", "nowhere.jsonl", "--dry-run", "run.max_epoch=3")
    assert res.returncode == 0, res.stderr[-3000:]
    exp = yaml.safe_load(res.stdout)
    assert exp["run"]["max_epoch"] == 3 and exp["run"]["init_lr"] == 1e-5 and exp["run"]["layer_decay"] == 0.95
    assert exp["model"]["model_type"] == "pretrain_opt2.7b" and exp["model"]["qformer_text_input"] is True
    assert exp["datasets"]["own_vqa"]["data"] == "nowhere.jsonl" and exp["run"]["valid_splits"] == ["val"]
    assert not (tmp_path / "output").exists()


def test_finetune_script_with_two_processes(tmp_path, fake_venv):
    """`NPROC=2 bash run_scripts/finetune.sh ... run.fsdp=true`: torchrun, gloo on CPU,
    trainable blocks sharded; one YAML, one saved model (gathered whole), one report."""
    images = tmp_path / "photos"
    train, val = write_images(images, 16, seed=10), write_images(images, 4, seed=11)
    keys = {"file_name": "image", "caption": "caption"}
    train_file, val_file = write_jsonl(tmp_path / "train.jsonl", train, keys), write_jsonl(tmp_path / "val.jsonl", val, keys)
    out = tmp_path / "run"
    run_env = dict(env(tmp_path), NPROC="2", MASTER_PORT=str(free_port()), LAVISLIKE_VENV=str(fake_venv))
    res = subprocess.run(["bash", "run_scripts/finetune.sh", "--task", "retrieval", "--data", str(train_file),
                          "--val", str(val_file), "--images", str(images), *TINY_STAGE1, "--output", str(out), *FAST,
                          "run.batch_size_train=4", "run.k_test=2", "run.fsdp=true"],
                         capture_output=True, text=True, env=run_env, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "world size 2" in log and "FSDP" in log, log[-2000:]
    assert train_steps(out) == [1, 2]  # 16 pairs, 2 ranks x 4 per step
    assert reported(res.stdout)["txt_r10"] == 100.0
    assert_trained_weights_loaded(run_printed_line(res.stdout)["model"], out)
