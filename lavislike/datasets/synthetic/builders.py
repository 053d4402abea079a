"""The synthetic corpora as registered builders: a YAML can name them like any real corpus.

Unlike a real corpus, a missing synthetic corpus is generated on first use (seconds, and
deterministic): the corpus root is the parent of the configured media folder
(``${cache:synthetic}`` by default). Generation options left ``null`` accept whatever
corpus is already there; set ones must match its manifest, else it is regenerated.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from lavislike.common import dist
from lavislike.datasets import base
from lavislike.datasets.builder import BaseDatasetBuilder, DatasetConfig
from lavislike.datasets.synthetic.generate import SyntheticParams, make_synthetic, read_manifest
from lavislike.registry import DATASETS

logger = logging.getLogger(__name__)


@dataclass
class SyntheticConfig(DatasetConfig):
    """``DatasetConfig`` plus the generation options (null: accept the existing corpus)."""

    seed: Optional[int] = None
    n_train: Optional[int] = None
    n_val: Optional[int] = None
    n_test: Optional[int] = None
    image_size: Optional[int] = None
    with_video: Optional[bool] = None


class SyntheticBuilder(BaseDatasetBuilder):
    """Generates the corpus when absent (or when it differs from the set options)."""

    def wanted_params(self) -> dict:
        keys = SyntheticParams.__dataclass_fields__
        wanted = {k: self.config.get(k) for k in keys if self.config.get(k) is not None}
        if self.data_type == "videos":
            wanted["with_video"] = True
        return wanted

    def ensure_corpus(self) -> None:
        root = self.media_root().parent
        wanted = self.wanted_params()
        manifest = read_manifest(root)
        have = manifest["params"] if manifest else None
        if have is not None and all(have.get(k) == v for k, v in wanted.items()):
            return
        if dist.is_main_process():
            params = {**vars(SyntheticParams()), **wanted}
            logger.info("generating the synthetic corpus in %s (%s)", root, params)
            make_synthetic(root, **params)
        dist.barrier()

    def build_datasets(self) -> dict:
        self.ensure_corpus()
        return super().build_datasets()


@DATASETS.register("synthetic_caption", config=SyntheticConfig)
class SyntheticCaptionBuilder(SyntheticBuilder):
    train_dataset_cls = base.CaptionDataset
    eval_dataset_cls = base.CaptionEvalDataset
    DEFAULT_CONFIGS = {"default": "caption.yaml"}


@DATASETS.register("synthetic_retrieval", config=SyntheticConfig)
class SyntheticRetrievalBuilder(SyntheticBuilder):
    train_dataset_cls = base.RetrievalDataset
    eval_dataset_cls = base.RetrievalEvalDataset
    DEFAULT_CONFIGS = {"default": "retrieval.yaml"}


@DATASETS.register("synthetic_vqa", config=SyntheticConfig)
class SyntheticVQABuilder(SyntheticBuilder):
    train_dataset_cls = base.VQADataset
    eval_dataset_cls = base.VQAEvalDataset
    DEFAULT_CONFIGS = {"default": "vqa.yaml"}


@DATASETS.register("synthetic_video_caption", config=SyntheticConfig)
class SyntheticVideoCaptionBuilder(SyntheticBuilder):
    train_dataset_cls = base.VideoCaptionDataset
    eval_dataset_cls = base.VideoCaptionEvalDataset
    DEFAULT_CONFIGS = {"default": "video_caption.yaml"}


@DATASETS.register("synthetic_video_qa", config=SyntheticConfig)
class SyntheticVideoQABuilder(SyntheticBuilder):
    train_dataset_cls = base.VideoQADataset
    eval_dataset_cls = base.VideoQAEvalDataset
    DEFAULT_CONFIGS = {"default": "video_qa.yaml"}
