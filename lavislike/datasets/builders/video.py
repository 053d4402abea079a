"""Video corpora: MSR-VTT captioning, MSR-VTT-QA and MSVD-QA.

Rows (LAVIS's files):

* ``msrvtt_caption`` train ``{"video": "video0.mp4", "caption": "a man is driving a car",
  "image_id": "video0"}``; val / test ``{"video": "video7010.mp4", "caption": [20 captions],
  "image_id": "video7010"}`` - the eval ``image_id`` is the clip number (7010) so the
  COCO-style caption metrics can use it.
* ``msrvtt_qa`` / ``msvd_qa`` ``{"video": "video7010.mp4", "question": "what is a woman
  doing?", "answer": "cook", "question_id": 0}``.

The QA corpora also ship ``ans2label`` (answer -> class id, built on train); it is
attached to every split as ``class_labels`` (None when the file is absent).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from lavislike.datasets.base import (
    VideoCaptionDataset,
    VideoCaptionEvalDataset,
    VideoQADataset,
    VideoQAEvalDataset,
)
from lavislike.datasets.builder import BaseDatasetBuilder, DatasetConfig
from lavislike.errors import DataError
from lavislike.registry import DATASETS

logger = logging.getLogger(__name__)

_DIGITS = re.compile(r"(\d+)(?:\.\w+)?$")


class MSRVTTCaptionEvalDataset(VideoCaptionEvalDataset):
    """MSR-VTT eval clips; ``image_id`` is the clip number of ``videoNNNN``."""

    def eval_image_id(self, ann: dict, index: int) -> int | str:
        for key in ("image_id", "video"):
            found = _DIGITS.search(str(ann.get(key, "")))
            if found:
                return int(found.group(1))
        return super().eval_image_id(ann, index)


@DATASETS.register("msrvtt_caption", config=DatasetConfig)
class MSRVTTCaptionBuilder(BaseDatasetBuilder):
    """MSR-VTT video captioning."""

    train_dataset_cls = VideoCaptionDataset
    eval_dataset_cls = MSRVTTCaptionEvalDataset
    DEFAULT_CONFIGS = {"default": "msrvtt_caption.yaml"}


class _VideoQABuilder(BaseDatasetBuilder):
    train_dataset_cls = VideoQADataset
    eval_dataset_cls = VideoQAEvalDataset

    def class_labels(self) -> dict[str, int] | None:
        """``ans2label`` of the corpus, or None when it is not configured / present."""
        paths = self.annotation_paths("ans2label")
        if not paths or not paths[0].is_file():
            if paths:
                logger.info("%s: %s not found; class_labels left unset", self.name, paths[0])
            return None
        try:
            labels = json.loads(paths[0].read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{self.name}: ans2label file {paths[0]} cannot be read: {exc}") from None
        if not isinstance(labels, dict):
            raise DataError(f"{self.name}: ans2label file {paths[0]} must map answers to integers")
        return labels

    def build_split(self, split: str, ann_paths: list[Path], root: Path):
        dataset = super().build_split(split, ann_paths, root)
        if not hasattr(self, "_labels"):
            self._labels = self.class_labels()
        dataset.class_labels = self._labels
        return dataset


@DATASETS.register("msrvtt_qa", config=DatasetConfig)
class MSRVTTQABuilder(_VideoQABuilder):
    """MSR-VTT-QA (open-ended video QA)."""

    DEFAULT_CONFIGS = {"default": "msrvtt_qa.yaml"}


@DATASETS.register("msvd_qa", config=DatasetConfig)
class MSVDQABuilder(_VideoQABuilder):
    """MSVD-QA (open-ended video QA)."""

    DEFAULT_CONFIGS = {"default": "msvd_qa.yaml"}
