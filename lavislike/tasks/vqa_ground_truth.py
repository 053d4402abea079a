"""Each VQA question's raw annotator answers (and answer type), from where the dataset names them.

1. The official annotation file (VQAv2 format: ``{"annotations": [{"question_id", "answers":
   [{"answer", ...}], "answer_type", "question_type"}]}``), named by the builder as
   ``eval_files.vqa_annotations`` or, for the LAVIS-style VQA builders, ``anno_files``; the
   question file next to it (``vqa_questions`` / ``ques_files``) tells which questions a
   complete evaluation covers.
2. Else the dataset's own rows (LAVIS's rows keep every annotator's answer in ``answer``).
   A row whose ``answer`` is one string (GQA-style, or your own data) counts as
   ``num_annotators`` annotators who all gave it: with one annotator the leave-one-out
   metric could never score (nobody is left to agree with).

Keys are ``str(question_id)`` (ids arrive as int or str depending on the corpus).
"""
from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any, Iterable

from lavislike.errors import DataError

logger = logging.getLogger("lavislike")

def _stamp(path: Path) -> tuple[str, int]:
    """``(path, mtime)``: what the parsed files below are cached by (an evaluation per epoch
    reads the same VQAv2 files; a rewritten file is read again)."""
    if not path.is_file():
        raise DataError(f"VQA ground truth: file not found: {path}")
    return str(path), path.stat().st_mtime_ns


def _read_json(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"VQA ground truth {path} cannot be read: {exc}") from None


def _official_files(dataset: Any) -> tuple[Path | None, Path | None]:
    files = getattr(dataset, "eval_files", None) or {}
    anno = files.get("vqa_annotations") or next(iter(getattr(dataset, "anno_files", None) or []), None)
    ques = files.get("vqa_questions") or next(iter(getattr(dataset, "ques_files", None) or []), None)
    return (Path(anno) if anno else None), (Path(ques) if ques else None)


def read_official_annotations(path: Path) -> dict[str, dict]:
    """``{str(question_id): {"answers": [raw answers], "answer_type", "question_type"}}``
    (cached per file version: do not modify it)."""
    return _official_annotations(*_stamp(path))


@functools.lru_cache(maxsize=2)
def _official_annotations(path: str, mtime_ns: int) -> dict[str, dict]:
    data = _read_json(path)
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise DataError(f"VQA annotation file {path}: expected {{\"annotations\": [...]}} (VQAv2 format)")
    out = {}
    for i, ann in enumerate(anns):
        try:
            answers = [a["answer"] for a in ann["answers"]]
            qid = ann["question_id"]
        except (KeyError, TypeError):
            raise DataError(f"VQA annotation file {path}: annotation {i} lacks question_id or "
                            f"answers[].answer") from None
        out[str(qid)] = {"answers": answers, "answer_type": ann.get("answer_type"),
                         "question_type": ann.get("question_type")}
    return out


def _question_ids(path: Path) -> frozenset[str]:
    return _question_id_set(*_stamp(path))


@functools.lru_cache(maxsize=2)
def _question_id_set(path: str, mtime_ns: int) -> frozenset[str]:
    data = _read_json(path)
    questions = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(questions, list):
        raise DataError(f"VQA question file {path}: expected {{\"questions\": [...]}} (VQAv2 format)")
    return frozenset(str(q.get("question_id")) for q in questions if isinstance(q, dict))


def _from_rows(rows: list[dict], num_annotators: int) -> dict[str, dict]:
    out = {}
    for row in rows:
        answer = row.get("answer")
        if answer is None or answer == "" or answer == []:
            continue
        qid = row.get("question_id", row.get("instance_id"))
        out[str(qid)] = {"answers": [answer] * num_annotators if isinstance(answer, str) else list(answer),
                         "answer_type": row.get("answer_type")}
    return out


def raw_ground_truth(dataset: Any, question_ids: Iterable, num_annotators: int = 10) -> dict[str, dict] | None:
    """Raw answers of the evaluated questions, or None when the dataset names no source."""
    wanted = {str(q) for q in question_ids}
    anno, ques = _official_files(dataset)
    if anno is not None:
        truth = read_official_annotations(anno)
        missing = sorted(wanted - truth.keys())
        if missing:
            raise DataError(f"VQA annotation file {anno}: {len(missing)} evaluated questions are not in it "
                            f"(e.g. question_id {missing[0]}); is it the annotation file of this split?")
        if ques is not None:
            expected = _question_ids(ques)
            if len(wanted & expected) < len(expected):
                logger.warning("vqa: results cover %d of the %d questions of %s (a partial evaluation; "
                               "the official tool scores complete result files only)",
                               len(wanted & expected), len(expected), ques)
        return truth
    rows = getattr(dataset, "annotation", None)
    if isinstance(rows, list):
        truth = _from_rows(rows, num_annotators)
        return truth or None
    return None
