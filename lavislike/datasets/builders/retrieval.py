"""Image-text retrieval corpora: COCO and Flickr30k (Karpathy splits).

Rows: train ``{"image": "flickr30k-images/1000092795.jpg", "caption": "...", "image_id": 0}``
(one row per caption; ``image_id`` groups the captions of one image so fine-tuning treats
them as positives); val / test ``{"image": ..., "caption": [5 captions]}`` (one row per
image; the dataset exposes ``text``, ``image``, ``txt2img``, ``img2txt`` for the
recall@k evaluation).
"""
from __future__ import annotations

from lavislike.datasets.base import RetrievalDataset, RetrievalEvalDataset
from lavislike.datasets.builder import BaseDatasetBuilder, DatasetConfig
from lavislike.registry import DATASETS


@DATASETS.register("coco_retrieval", config=DatasetConfig)
class COCORetrievalBuilder(BaseDatasetBuilder):
    """COCO retrieval: BLIP-2 fine-tunes stage 1 on train and reports the 5k test split."""

    train_dataset_cls = RetrievalDataset
    eval_dataset_cls = RetrievalEvalDataset
    DEFAULT_CONFIGS = {"default": "coco_retrieval.yaml"}


@DATASETS.register("flickr30k", config=DatasetConfig)
class Flickr30kBuilder(BaseDatasetBuilder):
    """Flickr30k retrieval: BLIP-2 reports zero-shot 1k test with the COCO-fine-tuned model."""

    train_dataset_cls = RetrievalDataset
    eval_dataset_cls = RetrievalEvalDataset
    DEFAULT_CONFIGS = {"default": "flickr30k.yaml"}

    @property
    def download_hint(self) -> str:
        return (
            "run `lavislike download flickr30k --what annotations`; the images need the "
            "terms-of-use form, see dataset_card/flickr30k.md"
        )
