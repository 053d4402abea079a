"""Caption corpora: COCO Karpathy, NoCaps (eval) and the pre-training sets VG, CC3M,
CC12M and SBU.

Row formats (LAVIS's annotation files):

* ``coco_caption`` train ``{"image": "val2014/COCO_val2014_000000522418.jpg",
  "caption": "A woman wearing a net on her head cutting a cake. ", "image_id": "coco_522418"}``;
  val / test ``{"image": ..., "caption": [5 captions]}`` - the eval ``image_id`` is the COCO
  id in the file name (what ``coco_karpathy_*_gt.json`` uses).
* ``nocaps`` ``{"image": "val/0013ea2087020901.jpg", "caption": [...], "img_id": 0}``.
* ``vg_caption`` / ``sbu_caption`` / ``conceptual_caption_*``
  ``{"image": <path under the images folder, or absolute>, "caption": "...", ...}``.

Visual Genome QA (``vg_vqa``) shares the VG images and lives in :mod:`.vqa`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from lavislike.datasets.base import CaptionDataset, CaptionEvalDataset
from lavislike.datasets.builder import BaseDatasetBuilder, DatasetConfig
from lavislike.registry import DATASETS

_TRAILING_ID = re.compile(r"(\d+)\.\w+$")


class COCOCaptionEvalDataset(CaptionEvalDataset):
    """COCO eval images; ``image_id`` is the integer COCO id parsed from the file name.

    Attributes:
        gt_files: COCO-format ground-truth files configured after the rows file
            (``coco_karpathy_<split>_gt.json``), for the caption metrics.
    """

    gt_files: list[str] = []

    def eval_image_id(self, ann: dict, index: int) -> int | str:
        found = _TRAILING_ID.search(os.path.basename(ann["image"]))
        return int(found.group(1)) if found else super().eval_image_id(ann, index)


class NoCapsEvalDataset(CaptionEvalDataset):
    """NoCaps eval images; ``image_id`` is the row's ``img_id`` (the official id)."""

    def eval_image_id(self, ann: dict, index: int) -> int | str:
        if "img_id" in ann:
            return int(ann["img_id"])
        return super().eval_image_id(ann, index)


class VGImagePaths:
    """Where Visual Genome rows find their images (mixed into VG dataset classes).

    The two image archives unpack into ``VG_100K/`` and ``VG_100K_2/``; a row path that is
    not found as given (a bare ``"1.jpg"``, or another folder prefix) is looked up by file
    name in both.
    """

    SUBDIRS = ("VG_100K", "VG_100K_2")

    def media_path(self, ann: dict) -> str:
        path = os.path.join(self.vis_root, ann[self.media_key])
        if os.path.isfile(path):
            return path
        name = os.path.basename(ann[self.media_key])
        for sub in self.SUBDIRS:
            candidate = os.path.join(self.vis_root, sub, name)
            if os.path.isfile(candidate):
                return candidate
        return path  # missing: the bad-data policy reports the configured path


class VGCaptionDataset(VGImagePaths, CaptionDataset):
    """Visual Genome region captions."""


class RowsThenExtrasBuilder(BaseDatasetBuilder):
    """Eval splits whose first annotation file holds the rows and the rest are extras.

    LAVIS lists auxiliary files (answer lists, official ground truth) in the same
    ``storage`` list as the rows; they must not be read as rows. Subclasses say how many
    leading files are rows (``EVAL_ROW_FILES``) and attach the others in :meth:`attach`.
    """

    EVAL_ROW_FILES = 1

    def build_split(self, split: str, ann_paths: list[Path], root: Path):
        if split == "train":
            return super().build_split(split, ann_paths, root)
        rows, extras = ann_paths[: self.EVAL_ROW_FILES], ann_paths[self.EVAL_ROW_FILES :]
        dataset = super().build_split(split, rows, root)
        self.attach(dataset, split, extras)
        return dataset

    def attach(self, dataset, split: str, extras: list[Path]) -> None:
        """Hook: keep the extra files of an eval split on the dataset."""


@DATASETS.register("coco_caption", config=DatasetConfig)
class COCOCaptionBuilder(RowsThenExtrasBuilder):
    """COCO Karpathy captions: BLIP-2 pre-training (train) and caption fine-tune / eval."""

    train_dataset_cls = CaptionDataset
    eval_dataset_cls = COCOCaptionEvalDataset
    DEFAULT_CONFIGS = {"default": "coco_caption.yaml"}

    def attach(self, dataset, split: str, extras: list[Path]) -> None:
        dataset.gt_files = [str(p) for p in extras]


@DATASETS.register("nocaps", config=DatasetConfig)
class NoCapsBuilder(BaseDatasetBuilder):
    """NoCaps val / test (zero-shot captioning eval of a COCO-fine-tuned model)."""

    eval_dataset_cls = NoCapsEvalDataset
    DEFAULT_CONFIGS = {"default": "nocaps.yaml"}


@DATASETS.register("vg_caption", config=DatasetConfig)
class VGCaptionBuilder(BaseDatasetBuilder):
    """Visual Genome region captions (pre-training, train only)."""

    train_dataset_cls = VGCaptionDataset
    DEFAULT_CONFIGS = {"default": "vg_caption.yaml"}


class _CrawledCaptionBuilder(BaseDatasetBuilder):
    """Web corpora whose images come from a crawl; the hint points at the card."""

    train_dataset_cls = CaptionDataset

    @property
    def download_hint(self) -> str:
        return (
            f"its images must be crawled: see dataset_card/{self.name}.md or run "
            f"`lavislike download {self.name} --how`"
        )


@DATASETS.register("conceptual_caption_3m", config=DatasetConfig)
class ConceptualCaption3MBuilder(_CrawledCaptionBuilder):
    """Conceptual Captions 3M (pre-training)."""

    DEFAULT_CONFIGS = {"default": "conceptual_caption_3m.yaml"}


@DATASETS.register("conceptual_caption_12m", config=DatasetConfig)
class ConceptualCaption12MBuilder(_CrawledCaptionBuilder):
    """Conceptual 12M (pre-training)."""

    DEFAULT_CONFIGS = {"default": "conceptual_caption_12m.yaml"}


@DATASETS.register("sbu_caption", config=DatasetConfig)
class SBUCaptionBuilder(_CrawledCaptionBuilder):
    """SBU Captions (pre-training)."""

    DEFAULT_CONFIGS = {"default": "sbu_caption.yaml"}
