"""Visual question answering corpora: VQAv2 (``coco_vqa``), OK-VQA, GQA and Visual Genome QA.

Rows (LAVIS's files):

* VQAv2 / OK-VQA train ``{"question_id": 458752000, "question": "What is this photo
  taken looking through?", "answer": ["net", "net", ...10], "image":
  "train2014/COCO_train2014_000000458752.jpg", "dataset": "vqa"}``; eval rows the same
  (answers optional).
* GQA ``{"image": "n161313.jpg", "question": "Is it overcast?", "answer": "no",
  "question_id": "201307251"}`` (one answer string).
* Visual Genome QA (``vg_qa.json``, train only) ``{"dataset": "vg", "question": "What
  color is the sky?", "answer": "blue", "image": <file under the VG images folder>,
  "question_id": ...}`` (one answer string; images found as for ``vg_caption``).

Eval splits list, after the rows file, an answer list (``answer_list.json``: the
candidate answers for rank-based inference) and for VQAv2 / OK-VQA the official question
and annotation files (what the VQA accuracy tool reads). They are attached to the split's
dataset as ``answer_list`` (list[str] or None), ``ques_files`` and ``anno_files``
(LAVIS: ``coco_fmt_qust_file`` / ``coco_fmt_anno_file``).
"""
from __future__ import annotations

import json
from pathlib import Path

from lavislike.datasets.base import VQADataset, VQAEvalDataset
from lavislike.datasets.builder import BaseDatasetBuilder, DatasetConfig
from lavislike.datasets.builders.captions import RowsThenExtrasBuilder, VGImagePaths
from lavislike.errors import DataError
from lavislike.registry import DATASETS


def read_answer_list(path: Path) -> list[str]:
    """The candidate answers of an ``answer_list.json`` (a JSON list of strings)."""
    try:
        answers = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"answer list {path} cannot be read: {exc}") from None
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise DataError(f"answer list {path}: expected a JSON list of strings")
    return answers


class _VQABuilder(RowsThenExtrasBuilder):
    train_dataset_cls = VQADataset
    eval_dataset_cls = VQAEvalDataset

    def attach(self, dataset, split: str, extras: list[Path]) -> None:
        dataset.answer_list = read_answer_list(extras[0]) if extras else None
        dataset.ques_files = [str(extras[1])] if len(extras) > 1 else []
        dataset.anno_files = [str(extras[2])] if len(extras) > 2 else []
        # LAVIS attribute names, read by code ported from LAVIS's VQA task
        dataset.coco_fmt_qust_file = dataset.ques_files[0] if dataset.ques_files else None
        dataset.coco_fmt_anno_file = dataset.anno_files[0] if dataset.anno_files else None


@DATASETS.register("coco_vqa", config=DatasetConfig)
class COCOVQABuilder(_VQABuilder):
    """VQAv2: BLIP-2 fine-tunes on train (+val) and reports test-dev; zero-shot on val."""

    DEFAULT_CONFIGS = {"default": "coco_vqa.yaml"}


@DATASETS.register("ok_vqa", config=DatasetConfig)
class OKVQABuilder(_VQABuilder):
    """OK-VQA: BLIP-2 reports zero-shot accuracy on the test (= official val) split."""

    DEFAULT_CONFIGS = {"default": "ok_vqa.yaml"}


@DATASETS.register("gqa", config=DatasetConfig)
class GQABuilder(_VQABuilder):
    """GQA balanced: BLIP-2 reports zero-shot accuracy on test-dev (``val`` here)."""

    DEFAULT_CONFIGS = {"default": "gqa.yaml", "balanced_val": "gqa_balanced_val.yaml"}


class VGVQADataset(VGImagePaths, VQADataset):
    """Visual Genome question-answer pairs: one answer per question.

    The answer gets weight 1 (the batch contract: weights sum to 1 per question); LAVIS
    gives it 0.2, which only its BLIP-1 answer-ranking loss reads.
    """


@DATASETS.register("vg_vqa", config=DatasetConfig)
class VGVQABuilder(BaseDatasetBuilder):
    """Visual Genome QA: added to VQAv2 for BLIP-2's VQA fine-tuning (train only)."""

    train_dataset_cls = VGVQADataset
    DEFAULT_CONFIGS = {"default": "vg_vqa.yaml"}
