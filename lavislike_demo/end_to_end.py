"""The end-to-end demo: prepare, stage 1, stage 2, zero-shot evaluation, table, examples.

Every training and evaluation run is an ordinary ``projects/blip2_tiny`` config run by the
registered runner and task (see :mod:`lavislike_demo.pipeline`); this module only orders
them, compares each number with its baselines and writes the report.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from lavislike_demo import pipeline
from lavislike_demo.baselines import majority_answers, majority_vqa_accuracy, retrieval_chance
from lavislike_demo.plan import CAPTION, RETRIEVAL, STAGE1, STAGE2, VQA, DemoPlan
from lavislike_demo.prepare import prepare
from lavislike_demo.report import Row, collect_examples, format_table, write_html, write_png
from lavislike.errors import LavislikeError

logger = logging.getLogger("lavislike")


class BelowBaselineError(LavislikeError):
    """A demo metric is not clearly above its baseline."""


def _results(run_dir: str) -> list[dict]:
    files = sorted(Path(run_dir, "result").glob("test_epoch*.json"))
    if not files:
        raise LavislikeError(f"{run_dir}/result: no test_epoch*.json written by the evaluation")
    return json.loads(files[-1].read_text())


def _vqa_by_type(corpus: Path, results: list[dict]) -> dict[str, float]:
    from lavislike.tasks.vqa_metrics import vqa_accuracy

    types = {r["question_id"]: r["question_type"]
             for r in json.loads((corpus / "annotations" / "vqa_test.json").read_text())}
    scores: dict[str, list[float]] = {}
    for r in results:
        scores.setdefault(types[r["question_id"]], []).append(vqa_accuracy(r["answer"], r["gt_answers"]))
    return {t: 100.0 * sum(v) / len(v) for t, v in sorted(scores.items())}


def table_rows(ret: dict, ret_blind: dict, cap: dict, cap_blind: dict, vqa: dict, vqa_blind: dict,
               n_images: int, majority: float) -> list[Row]:
    rows = []
    for prefix, label in (("txt", "image->text"), ("img", "text->image")):
        for k in (1, 5, 10):
            rows.append(Row("retrieval", f"{label} R@{k}", ret[f"{prefix}_r{k}"],
                            {"blind (blank images)": ret_blind[f"{prefix}_r{k}"],
                             "chance / majority": retrieval_chance(k, n_images)}))
    for key, label in (("Bleu_4", "BLEU-4"), ("CIDEr", "CIDEr")):
        rows.append(Row("captioning", f"{label} (x100)", 100 * cap[key],
                        {"blind (blank images)": 100 * cap_blind[key], "chance / majority": None}))
    rows.append(Row("VQA", "accuracy", vqa["accuracy"],
                    {"blind (blank images)": vqa_blind["accuracy"], "chance / majority": majority}))
    return rows


def run_demo(plan: DemoPlan, check: bool = True) -> dict:
    """Run everything; returns timings, metrics, rows and output paths.

    Raises:
        BelowBaselineError: with ``check``, a number is not clearly above its baseline
            (after everything is written, so the outputs can be inspected).
    """
    times: dict[str, float] = {}
    t_all, cpu_all = time.perf_counter(), time.process_time()
    prep = prepare(plan)
    times.update({f"prepare: {k}": v for k, v in prep["seconds"].items()})
    logger.info("image encoder training accuracy (vision only): %s", prep["encoder_accuracy"])

    s1 = pipeline.train(plan, STAGE1)
    times["stage 1 (ITC + ITM + ITG)"] = s1["seconds"]
    s2 = pipeline.train(plan, STAGE2)
    times["stage 2 (LM loss into the frozen OPT)"] = s2["seconds"]

    evals = {}
    for name, rel in (("retrieval", RETRIEVAL), ("caption", CAPTION), ("vqa", VQA)):
        for blind in (False, True):
            key = f"{name}{' blind' if blind else ''}"
            evals[key] = pipeline.evaluate(plan, rel, blind=blind)
            times[f"evaluate: {key}"] = evals[key]["seconds"]
    corpus = Path(prep["corpus"])
    n_images = len(json.loads((corpus / "annotations" / "caption_test.json").read_text()))
    majority = majority_vqa_accuracy(corpus / "annotations")
    rows = table_rows(evals["retrieval"]["metrics"], evals["retrieval blind"]["metrics"],
                      evals["caption"]["metrics"], evals["caption blind"]["metrics"],
                      evals["vqa"]["metrics"], evals["vqa blind"]["metrics"], n_images, majority)

    vqa_results = _results(evals["vqa"]["output_dir"])
    per_type = {
        "model": _vqa_by_type(corpus, vqa_results),
        "blind": _vqa_by_type(corpus, _results(evals["vqa blind"]["output_dir"])),
        "majority answer": majority_answers(json.loads((corpus / "annotations" / "vqa_train.json").read_text())),
    }
    report_dir = Path(s2["output_dir"]).parent / "demo_report"
    examples = collect_examples(corpus, _results(evals["caption"]["output_dir"]),
                                _results(evals["caption blind"]["output_dir"]), vqa_results)
    html_path = write_html(examples, report_dir / "examples.html")
    png_path = write_png(examples, report_dir / "examples.png")
    times["total"] = time.perf_counter() - t_all
    times["total CPU time (all threads)"] = time.process_time() - cpu_all
    summary = {
        "timings_s": times,
        "rows": rows,
        "vqa_per_type": per_type,
        "encoder_accuracy": prep["encoder_accuracy"],
        "paths": {
            "corpus": str(corpus), "tiny OPT (frozen LLM)": str(prep["llm"]),
            "image encoder (frozen)": str(prep["image_encoder"]),
            "stage 1 run (curves.png, model_best.safetensors)": s1["output_dir"],
            "stage 2 run (curves.png, model_best.safetensors)": s2["output_dir"],
            **{f"eval: {k}": v["output_dir"] for k, v in evals.items()},
            "examples (HTML)": str(html_path), "examples (PNG)": str(png_path),
        },
    }
    (report_dir / "table.txt").write_text(format_table(rows) + "\n")
    summary["paths"]["table"] = str(report_dir / "table.txt")
    if check:
        failed = [f"{r.group} {r.metric}" for r in rows if not r.clearly_above()]
        summary["failed"] = failed
    return summary
