"""The ``lavislike`` command line.

Example:
    lavislike train --cfg-path projects/blip2_tiny/train/pretrain_stage1.yaml run.max_epoch=2
    lavislike zoo
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from lavislike.errors import LavislikeError

COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def command(name: str):
    def add(fn):
        COMMANDS[name] = fn
        return fn

    return add


def _load(args: argparse.Namespace):
    from lavislike.config import load_config

    return load_config(args.cfg_path, list(args.overrides or []) + list(args.options or []))


def _launch(args: argparse.Namespace, evaluate_only: bool) -> None:
    from lavislike.runners.launch import check, run

    cfg = _load(args)
    if args.check_config:
        check(cfg, args.cfg_path)
    else:
        run(cfg, cfg_path=args.cfg_path, evaluate_only=evaluate_only)


@command("train")
def _train(args: argparse.Namespace) -> None:
    _launch(args, evaluate_only=False)


@command("evaluate")
def _evaluate(args: argparse.Namespace) -> None:
    _launch(args, evaluate_only=True)


@command("config")
def _config(args: argparse.Namespace) -> None:
    from omegaconf import OmegaConf

    print(OmegaConf.to_yaml(_load(args), resolve=args.resolve))


@command("zoo")
def _zoo(args: argparse.Namespace) -> None:
    from lavislike.zoo import zoo_text

    print(zoo_text(args.kind))


@command("convert")
def _convert(args: argparse.Namespace) -> None:
    from lavislike.models.convert.cli import convert_main

    convert_main(args)


@command("finetune")
def _finetune(args: argparse.Namespace) -> int:
    from lavislike.finetune import finetune_main

    return finetune_main(args)


@command("cache-features")
def _cache_features(args: argparse.Namespace) -> None:
    from lavislike.datasets.feature_cache import cache_features

    for split, folder in cache_features(_load(args), dtype=args.dtype, batch_size=args.batch_size).items():
        print(f"{split}: {folder}")


@command("make-synthetic")
def _make_synthetic(args: argparse.Namespace) -> None:
    from lavislike.common.paths import cache_path
    from lavislike.datasets.synthetic import make_synthetic

    out = make_synthetic(
        args.out or cache_path("synthetic"), seed=args.seed, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
        image_size=args.image_size, with_video=args.video,
    )
    print(f"synthetic corpus written to {out['root']}: " + ", ".join(f"{k} {v}" for k, v in out["counts"].items()))


@command("serve")
def _serve(args: argparse.Namespace) -> None:
    from lavislike.serve.command import serve_main

    serve_main(args)


def _with_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg-path", "--cfg", dest="cfg_path", help="experiment YAML (projects/...)")
    p.add_argument("--options", nargs="+", default=[], help="overrides a.b=c (LAVIS style)")
    p.add_argument("overrides", nargs="*", help="overrides a.b=c")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lavislike", description="BLIP-2-style vision-language pre-training")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("train", "evaluate"):
        p = sub.add_parser(name, help=f"{name} from an experiment config")
        _with_config(p)
        p.add_argument("--check-config", action="store_true",
                       help="only check the config (the run scripts do, before starting workers)")
    p = sub.add_parser("config", help="print the resolved config")
    _with_config(p)
    p.add_argument("--no-resolve", dest="resolve", action="store_false", help="keep ${...} interpolations")
    p = sub.add_parser("zoo", help="list models (with their types), datasets, tasks, image encoders, LLMs")
    p.add_argument("kind", nargs="?", default=None, help="only this registry (models, datasets, ...)")
    p = sub.add_parser("convert", help="convert checkpoints between LAVIS .pth, lavislike and Hugging Face")
    p.add_argument("src", help="LAVIS .pth, lavislike checkpoint folder, or HF folder / hub id")
    p.add_argument("dst", help="output folder")
    p.add_argument("--arch", help="model name (needed for a LAVIS .pth)")
    p.add_argument("--model-type", dest="model_type", help="model type (for a LAVIS .pth)")
    p.add_argument("--to", choices=("lavislike", "hf"), default="lavislike", help="output format")
    from lavislike.finetune import add_arguments as finetune_arguments

    finetune_arguments(sub.add_parser("finetune", help="fine-tune on your own images and texts (no code)"))
    p = sub.add_parser("cache-features", help="run the frozen image encoder once over the datasets that set "
                       "feature_cache and store its output")
    _with_config(p)
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="stored precision")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None, help="default: run.batch_size_eval")
    sub.add_parser("download", add_help=False, help="download a dataset (lavislike download --help)")
    p = sub.add_parser("make-synthetic", help="generate the synthetic corpus")
    p.add_argument("--out", default=None, help="folder (default: $LAVISLIKE_CACHE/synthetic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", dest="n_train", type=int, default=2000)
    p.add_argument("--n-val", dest="n_val", type=int, default=200)
    p.add_argument("--n-test", dest="n_test", type=int, default=200)
    p.add_argument("--image-size", dest="image_size", type=int, default=64)
    p.add_argument("--video", action="store_true", help="also write short videos")
    from lavislike.serve.command import add_arguments as serve_arguments

    serve_arguments(sub.add_parser("serve", help="web app: captioning, VQA, matching, search (the web extra)"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print as one line and exit with status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from lavislike.common.logging import setup_logging

    setup_logging()
    if argv[:1] == ["download"]:  # its own parser, options and --help included
        from lavislike.datasets.download import download_main

        return download_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args) or 0
    except LavislikeError as exc:
        print(f"lavislike {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lavislike {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
