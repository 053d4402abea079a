"""``python -m lavislike_demo``: the end-to-end BLIP-2 demo on CPU (see ``--help``).

Commands:
    all (default)   prepare, stage 1, stage 2, zero-shot evaluation, table and examples
    prepare         only the corpus, the tiny OPT and the image encoder
    prepare stage1  ... and stage 1 (what projects/blip2_tiny/train/pretrain_stage2.yaml needs)
    prepare t5      ... and a tiny T5 (projects/blip2_tiny/train/pretrain_stage2_t5.yaml; not in "all")
"""
from __future__ import annotations

import argparse
import sys
import time


def _print_summary(summary: dict) -> None:
    from lavislike_demo.report import format_table

    print("\n== lavislike demo: zero-shot results on the synthetic test split ==")
    print(format_table(summary["rows"]))
    per_type = summary["vqa_per_type"]
    print("\nVQA accuracy per question type (model / blind; majority answer of the type):")
    for qtype, acc in per_type["model"].items():
        print(f"  {qtype:9s} {acc:6.1f} / {per_type['blind'].get(qtype, 0.0):6.1f}   "
              f"majority answer: {per_type['majority answer'].get(qtype)}")
    acc = summary.get("encoder_accuracy") or {}
    if acc:
        print("\nimage encoder (vision-only pre-training) last-batch accuracy: "
              + ", ".join(f"{k} {100 * v:.0f}%" for k, v in acc.items()))
    print("\ntimings (s):")
    for k, v in summary["timings_s"].items():
        print(f"  {k:40s} {v:7.1f}")
    print("\noutputs:")
    for k, v in summary["paths"].items():
        print(f"  {k}: {v}")


def main(argv=None) -> int:
    from lavislike_demo.plan import PRECISIONS

    parser = argparse.ArgumentParser(prog="python -m lavislike_demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="*", default=["all"], help="all | prepare [stage1] [t5]")
    parser.add_argument("--quick", action="store_true", help="the smoke-test size (seconds, numbers meaningless)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="do not fail when a number is not clearly above its baseline")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default: the configs as they are) or recommended: the recommended CPU "
                             "training configuration, run.frozen_precision=auto run.amp=true (frozen parts in "
                             "bf16, bf16 autocast) for every run, where the CPU has native bf16 (else fp32)")
    parser.add_argument("overrides", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    command = [c for c in args.command if "=" not in c] or ["all"]
    overrides = [c for c in args.command if "=" in c]

    import torch

    from lavislike.common.logging import setup_logging
    from lavislike_demo.plan import STAGE1, DemoPlan, precision_overrides
    from lavislike.errors import LavislikeError

    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = DemoPlan(quick=args.quick, extra=tuple(overrides), precision=args.precision)
    if args.precision != "fp32":
        print(f"demo: precision {args.precision}: "
              f"{' '.join(precision_overrides(args.precision)) or 'fp32 (this CPU has no native bf16)'}")
    t0 = time.perf_counter()
    try:
        if command[:1] == ["prepare"]:
            from lavislike_demo import pipeline
            from lavislike_demo.prepare import ensure_t5, prepare

            extra = command[1:]
            unknown = [c for c in extra if c not in ("stage1", "t5")]
            if unknown:
                parser.error(f"unknown: prepare {' '.join(unknown)} (valid: prepare, prepare stage1, prepare t5)")
            prep = prepare(plan)
            for k in ("corpus", "qformer_init", "llm", "image_encoder"):
                print(f"{k}: {prep[k]}")
            if "stage1" in extra:
                print(f"stage 1: {pipeline.train(plan, STAGE1)['best']}")
            if "t5" in extra:
                print(f"tiny T5: {ensure_t5(plan, prep['corpus'])[0]}")
            return 0
        if command != ["all"]:
            parser.error(f"unknown command {' '.join(command)} (valid: all, prepare, prepare stage1, prepare t5)")
        from lavislike_demo.end_to_end import run_demo

        summary = run_demo(plan, check=args.check)
        _print_summary(summary)
        failed = summary.get("failed") if args.check and not args.quick else []
        if failed:
            print(f"\ndemo: FAILED: not clearly above the baseline: {', '.join(failed)}", file=sys.stderr)
            return 3
        print(f"\ndemo: done in {time.perf_counter() - t0:.0f} s")
        return 0
    except LavislikeError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
