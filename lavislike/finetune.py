"""``lavislike finetune``: fine-tune BLIP-2 on your own data with the paper's recipe.

    lavislike finetune --task captioning --data pets/metadata.jsonl
    lavislike finetune --task vqa --data qa.csv --val qa_val.csv --output runs/qa run.max_epoch=2

1. The experiment YAML: the project's fine-tuning config for the task
   (``projects/blip2/train/{caption_coco_ft,vqav2_ft,retrieval_coco_ft}.yaml``: the paper's
   hyper-parameters) with its corpus replaced by ``own_caption`` / ``own_vqa`` /
   ``own_retrieval`` reading ``--data`` (and ``--val``), validation on the ``val`` split,
   the output folder and the ``a.b=c`` overrides. ``--model`` / ``--model-type`` other than
   the recipe's take that type's own parts, weights and image processors (the recipe keeps
   its prompt and hyper-parameters). Written as ``<output>/finetune.yaml``, which
   ``lavislike train --cfg-path`` runs again; ``--dry-run`` prints it and stops.
2. Train: each epoch ends with the task's metric on ``val`` (CIDEr + BLEU-4, VQA accuracy,
   mean recall), the best weights kept.
3. Save the best model as a folder (``model.safetensors`` + ``config.yaml``) and print it
   with the line of Python that loads it.

Several GPUs: ``NPROC=4 bash run_scripts/finetune.sh --task ... --data ...``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

# task -> (the project's fine-tuning recipe, the own-data builder)
RECIPES = {
    "captioning": ("caption_coco_ft.yaml", "own_caption"),
    "vqa": ("vqav2_ft.yaml", "own_vqa"),
    "retrieval": ("retrieval_coco_ft.yaml", "own_retrieval"),
}
PROJECT_DIR = Path(__file__).resolve().parents[1] / "projects" / "blip2" / "train"
MODEL_DIR = "model"  # the saved model folder inside the output folder
YAML_NAME = "finetune.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=sorted(RECIPES), help="what to fine-tune for")
    p.add_argument("--data", required=True,
                   help="training data: JSONL / JSON / CSV file, imagefolder folder (metadata.jsonl or "
                        ".csv), save_to_disk folder, or a `datasets` name in the local cache")
    p.add_argument("--val", default=None, help="validation data (same kinds; default: 10%% of --data's images)")
    p.add_argument("--test", default=None, help="test data, evaluated with the best weights at the end")
    p.add_argument("--images", default=None, help="folder relative image paths are under (default: the file's)")
    p.add_argument("--model", default=None, help="model name (default: the recipe's, e.g. blip2_opt)")
    p.add_argument("--model-type", dest="model_type", default=None, help="model type (default: the recipe's)")
    p.add_argument("--output", default=None, help="output folder (default: $LAVISLIKE_OUTPUT/finetune/<task>)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="print the experiment YAML and stop")
    p.add_argument("--cfg-path", "--cfg", dest="cfg_path", default=None,
                   help="start from this experiment YAML instead of the task's project recipe")
    p.add_argument("overrides", nargs="*", help="overrides a.b=c, applied on top")


# -- the experiment ----------------------------------------------------------------------------
def recipe_path(task: str, cfg_path: str | None) -> Path:
    return Path(cfg_path) if cfg_path else PROJECT_DIR / RECIPES[task][0]


def _local(spec: str | None) -> str | None:
    """An existing path made absolute (the YAML must work from any folder); a name stays."""
    if spec is None:
        return None
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def _model_part(recipe_model: dict, arch: str | None, model_type: str | None) -> tuple[dict, bool]:
    """The ``model`` block and whether it is the recipe's own model.

    Another model or type keeps only the recipe's task keys (the prompt): the rest of the
    recipe's block (image encoder, weights, LLM) belongs to the recipe's model type."""
    from lavislike.registry import MODELS

    same_arch = arch in (None, recipe_model.get("arch"))
    if same_arch and model_type in (None, recipe_model.get("model_type")):
        return dict(recipe_model), True
    block = {"arch": arch or recipe_model["arch"]}
    if model_type:
        block["model_type"] = model_type
    schema = MODELS.get_config(block["arch"])
    keys = {f.name for f in dataclasses.fields(schema)} if schema else set()
    for key in ("prompt",):
        if key in recipe_model and key in keys:
            block[key] = recipe_model[key]
    return block, False


def experiment(args: argparse.Namespace) -> dict:
    """The experiment (a plain dict, interpolations unresolved) ``args`` describe."""
    from omegaconf import OmegaConf

    from lavislike.config import parse_overrides, preprocess_config, read_yaml

    task = args.task
    recipe = OmegaConf.to_container(read_yaml(recipe_path(task, args.cfg_path)), resolve=False)
    name = RECIPES[task][1]
    model, own_model = _model_part(recipe.get("model") or {}, args.model, args.model_type)
    corpora = list((recipe.get("datasets") or {}).values())
    first = corpora[0] if corpora else {}
    block: dict = {"data": _local(args.data)}
    for key in ("val", "test", "images"):
        if getattr(args, key):
            block[key] = _local(getattr(args, key))
    if own_model and "vis_processor" in first:
        block["vis_processor"] = first["vis_processor"]
    else:  # the model type's image size and normalisation
        prep = preprocess_config(model["arch"], model.get("model_type"))
        block["vis_processor"] = OmegaConf.to_container(prep.vis_processor, resolve=True)
    if "text_processor" in first:
        block["text_processor"] = first["text_processor"]
    run = dict(recipe.get("run") or {})
    out = Path(args.output) if args.output else Path(os.environ.get("LAVISLIKE_OUTPUT", "output")) / "finetune" / task
    run.update(output_dir=str(out.expanduser().resolve()), train_splits=["train"], valid_splits=["val"],
               test_splits=["test"] if args.test else [])
    exp = {"model": model, "datasets": {name: block}, "run": run}
    for key in ("imports", "preprocess"):
        if key in recipe:
            exp[key] = recipe[key]
    merged = OmegaConf.merge(OmegaConf.create(exp), parse_overrides(list(args.overrides or [])))
    return OmegaConf.to_container(merged, resolve=False)


def experiment_yaml(args: argparse.Namespace, exp: dict) -> str:
    from omegaconf import OmegaConf

    cmd = " ".join(["lavislike finetune"] + sys.argv[2:]) if sys.argv[1:2] == ["finetune"] else "lavislike finetune"
    return (f"# Written by `{cmd}`\n# from {recipe_path(args.task, args.cfg_path)} (the paper's recipe for "
            f"{args.task}) with your data; run it again with: lavislike train --cfg-path <this file>\n"
            + OmegaConf.to_yaml(OmegaConf.create(exp)))


# -- running -----------------------------------------------------------------------------------
def finetune_main(args: argparse.Namespace) -> int:
    from lavislike.common import dist as D
    from lavislike.common.io import write_text_atomic
    from lavislike.config import load_config

    exp = experiment(args)
    text = experiment_yaml(args, exp)
    out = Path(exp["run"]["output_dir"])
    path = out / YAML_NAME
    if args.dry_run:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:  # check it as `train` would read it
            (Path(tmp) / YAML_NAME).write_text(text)
            load_config(Path(tmp) / YAML_NAME, [])
        print(text, end="")
        return 0
    if int(os.environ.get("RANK", "0")) == 0:
        write_text_atomic(path, text)
    cfg = load_config(_wait_for(path, text), [])
    datasets = build_data(cfg)
    from lavislike.common.checkpoint import load_trainable_weights
    from lavislike.runners.launch import build_runner

    runner = build_runner(cfg, cfg_path=path, datasets=datasets)
    summary = runner.train()
    model = runner.unwrapped_model
    best = out / "model_best.safetensors"
    if best.is_file():
        load_trainable_weights(model, best, runner.load_full_fn())
    state = None
    if runner.fsdp:  # the trainable blocks are sharded: every rank takes part in gathering them
        from lavislike.models.loading import pretrained_state
        from lavislike.runners.distributed import gather_full

        state = gather_full(pretrained_state(model), keep=D.is_main_process())
    if D.is_main_process():
        model.save_pretrained(out / MODEL_DIR, preprocess=trained_processors(cfg, model), state=state)
        print(report(exp, summary, out, model.cfg), flush=True)
    D.barrier()
    return 0


def trained_processors(cfg, model) -> dict:
    """The processors the fine-tuning read its corpus with, over the model's: saved with
    the model, they are what ``load_model_and_preprocess`` gives back."""
    from omegaconf import OmegaConf

    from lavislike.models.loading import model_preprocess, overlay_processors

    corpus = next(iter(cfg.datasets.values()))
    used = {kind: OmegaConf.to_container(corpus[kind], resolve=True)
            for kind in ("vis_processor", "text_processor") if corpus.get(kind)}
    return OmegaConf.to_container(overlay_processors(model_preprocess(model.cfg), used))


def build_data(cfg) -> dict:
    """The datasets, built before the model: a wrong column name or images folder is one
    line now, not after minutes of loading an LLM."""
    from lavislike.tasks import setup_task

    return setup_task(cfg).build_datasets(cfg)


def _wait_for(path: Path, text: str, timeout: float = 60.0) -> Path:
    """Other ranks read the YAML rank 0 writes (the same text: only the order matters)."""
    import time

    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text() == text) and time.monotonic() < deadline:
        time.sleep(0.1)
    return path


def val_metrics(out: Path, split_key: str, step: int | None) -> dict:
    """The validation metrics logged at ``step`` (the best one), else the last logged."""
    log = out / "metrics.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    rows = [r for r in rows if r.get("split") == split_key]
    chosen = [r for r in rows if step is not None and r.get("step") == step] or rows
    if not chosen:
        return {}
    return {k: v for k, v in chosen[-1].items() if k not in ("split", "step", "epoch")}


def report(exp: dict, summary: dict, out: Path, model_cfg) -> str:
    """The closing lines: the validation metric, the checkpoint and how to load it."""
    name = next(iter(exp["datasets"]))
    metrics = val_metrics(out, f"{name}/val", summary.get("best_step"))
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, (int, float)))
    ckpt = out / MODEL_DIR
    line = (f"from lavislike.models import load_model_and_preprocess; model, vis_processors, txt_processors = "
            f"load_model_and_preprocess({model_cfg.arch!r}, {model_cfg.model_type!r}, is_eval=True, "
            f"checkpoint={str(ckpt)!r})")
    step = summary.get("best_step") or summary.get("global_step")
    return "\n".join([
        f"validation ({name}/val, step {step}): {shown or 'no metric (no val split with references)'}",
        f"checkpoint: {ckpt}",
        f"experiment: {out / YAML_NAME}",
        "load it with:",
        line,
    ])
