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


def _register(kind: str, train_cls: type, eval_cls: type) -> type:
    """Register ``synthetic_<kind>``: ``train_cls`` / ``eval_cls`` over the generated
    corpus, defaults from ``configs/<kind>.yaml``."""
    title = "".join(part.upper() if part in ("qa", "vqa") else part.capitalize() for part in kind.split("_"))
    cls = type(f"Synthetic{title}Builder", (SyntheticBuilder,), {
        "__module__": __name__,
        "__doc__": f"The synthetic ``{kind}`` corpus ({train_cls.__name__} / {eval_cls.__name__}).",
        "train_dataset_cls": train_cls,
        "eval_dataset_cls": eval_cls,
        "DEFAULT_CONFIGS": {"default": f"{kind}.yaml"},
    })
    return DATASETS.register(f"synthetic_{kind}", config=SyntheticConfig)(cls)


SyntheticCaptionBuilder = _register("caption", base.CaptionDataset, base.CaptionEvalDataset)
SyntheticRetrievalBuilder = _register("retrieval", base.RetrievalDataset, base.RetrievalEvalDataset)
SyntheticVQABuilder = _register("vqa", base.VQADataset, base.VQAEvalDataset)
SyntheticVideoCaptionBuilder = _register("video_caption", base.VideoCaptionDataset, base.VideoCaptionEvalDataset)
SyntheticVideoQABuilder = _register("video_qa", base.VideoQADataset, base.VideoQAEvalDataset)
