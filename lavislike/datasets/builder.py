"""The dataset builder base class: a config block -> ``{"train": ds, "val": ds, "test": ds}``.

A corpus is a builder class registered in ``DATASETS`` with a default YAML::

    @DATASETS.register("coco_caption", config=DatasetConfig)
    class COCOCaptionBuilder(BaseDatasetBuilder):
        train_dataset_cls = CaptionDataset
        eval_dataset_cls = COCOCaptionEvalDataset
        DEFAULT_CONFIGS = {"default": "coco/defaults_cap.yaml"}  # under <module dir>/configs/

The default YAML uses LAVIS's layout (so existing downloads keep working)::

    datasets:
      coco_caption:
        dataset_card: dataset_card/coco_caption.md
        data_type: images            # or videos
        build_info:
          annotations:
            train: {url: [https://...coco_karpathy_train.json], storage: [coco/annotations/coco_karpathy_train.json]}
            val:   {url: [...], storage: [...]}
            test:  {url: [...], storage: [...]}
          images: {storage: coco/images/}
        vis_processor:  {train: {name: blip2_image_train, image_size: 224}, eval: {name: blip_image_eval}}
        text_processor: {train: {name: blip_caption}, eval: {name: blip_caption}}

Storage paths are relative to :func:`lavislike.common.paths.cache_dir` (``$LAVISLIKE_CACHE``)
unless absolute; ``${cache:coco/images}`` also works. Builders never download: a missing
annotation file or media folder is a :class:`DataError` naming the file and
``lavislike download <name>``. Splits whose annotation files are all present are built;
missing ones are logged and left out; nothing present at all is an error.

Example:
    >>> datasets = load_datasets("synthetic_caption")        # default YAML
    >>> datasets["train"][0].keys()
    dict_keys(['image', 'text_input', 'image_id'])
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from lavislike.common.paths import cache_path
from lavislike.errors import ConfigError, DataError
from lavislike.registry import DATASETS

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class BuildInfo:
    """Where a corpus's files live (LAVIS ``build_info``)."""

    # split -> {url, storage, [sha256], [eval_files: {coco_gt | vqa_questions | vqa_annotations | answer_list: path}]}
    annotations: Dict[str, Any] = field(default_factory=dict)
    images: Any = None  # {storage: folder, [url ...]}
    videos: Any = None
    storage: Any = None  # webdataset shard pattern(s) (laion)


@dataclass
class DatasetConfig:
    """Keys of one ``datasets.<name>`` block; builders with more keys subclass this."""

    type: str = "default"  # which of the builder's DEFAULT_CONFIGS
    dataset_card: str = ""
    data_type: str = "images"  # images | videos
    build_info: BuildInfo = field(default_factory=BuildInfo)
    vis_processor: Dict[str, Any] = field(default_factory=dict)  # {train: {name: ...}, eval: {...}}
    text_processor: Dict[str, Any] = field(default_factory=dict)
    strict: bool = False  # fail at the first bad sample, naming the file
    max_bad_samples: Optional[int] = None  # stop the run past this many skipped per epoch
    max_bad_fraction: Optional[float] = 0.1  # ... or past this fraction at epoch end
    # weight of this corpus when several are mixed; None: its size (a stream: 1), as LAVIS
    sample_ratio: Optional[float] = None
    # folder of frozen image-encoder features (lavislike cache-features): items carry
    # image_features instead of image; see lavislike/datasets/feature_cache.py
    feature_cache: Optional[str] = None


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple, ListConfig)):
        return list(value)
    return [value]


def resolve_storage(path: Any) -> Path:
    """A storage entry as an absolute path (relative ones live under the cache dir)."""
    return cache_path(str(path))


class BaseDatasetBuilder:
    """Builds the split datasets of one corpus from its config block.

    Class attributes a builder sets:
        train_dataset_cls: dataset class of the ``train`` split.
        eval_dataset_cls: dataset class of ``val`` / ``test``.
        DEFAULT_CONFIGS: ``{type: yaml path}`` relative to ``<module dir>/configs/``.
        DEFAULT_PROCESSORS: processor blocks used when the config names none.
        DOWNLOAD_HINT: how to get the files (default: ``lavislike download <name>``).

    Args:
        cfg: the merged ``datasets.<name>`` block (see :func:`dataset_block`).
        name: the registry name (for messages and dataset names).
    """

    train_dataset_cls: ClassVar[type | None] = None
    eval_dataset_cls: ClassVar[type | None] = None
    DEFAULT_CONFIGS: ClassVar[dict[str, str]] = {}
    DEFAULT_PROCESSORS: ClassVar[dict[str, dict]] = {
        "images": {
            "vis_processor": {"train": {"name": "blip2_image_train", "image_size": 224},
                              "eval": {"name": "blip_image_eval", "image_size": 224}},
            "text_processor": {"train": {"name": "blip_caption"}, "eval": {"name": "blip_caption"}},
        },
        "videos": {
            "vis_processor": {"train": {"name": "alpro_video_train", "image_size": 224, "n_frms": 8},
                              "eval": {"name": "alpro_video_eval", "image_size": 224, "n_frms": 8}},
            "text_processor": {"train": {"name": "blip_caption"}, "eval": {"name": "blip_caption"}},
        },
    }
    DOWNLOAD_HINT: ClassVar[str | None] = None

    def __init__(self, cfg: Any = None, name: str | None = None):
        self.name = name or registered_name(type(self))
        if cfg is None:
            cfg = dataset_block(self.name)
        self.config = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
        self.data_type = str(self.config.get("data_type", "images"))
        if self.data_type not in ("images", "videos"):
            raise ConfigError(f"datasets.{self.name}.data_type: '{self.data_type}' is not one of images, videos")
        self.vis_processors: dict[str, Callable | None] = {"train": None, "eval": None}
        self.text_processors: dict[str, Callable | None] = {"train": None, "eval": None}

    @classmethod
    def from_config(cls, cfg: Any, name: str | None = None) -> "BaseDatasetBuilder":
        return cls(cfg, name)

    # -- processors --------------------------------------------------------------------
    def build_processors(self) -> None:
        """Build train/eval processors from the config (or ``DEFAULT_PROCESSORS``)."""
        from lavislike.processors.base import build_processor

        defaults = self.DEFAULT_PROCESSORS.get(self.data_type, {})
        for key, target in (("vis_processor", self.vis_processors), ("text_processor", self.text_processors)):
            block = self.config.get(key) or {}
            for split in ("train", "eval"):
                sub = block.get(split) if block else None
                if sub is None:
                    sub = defaults.get(key, {}).get(split)
                target[split] = build_processor(sub, f"datasets.{self.name}.{key}.{split}")

    # -- paths -------------------------------------------------------------------------
    @property
    def download_hint(self) -> str:
        return self.DOWNLOAD_HINT or f"run `lavislike download {self.name}` or see dataset_card/{self.name}.md"

    def annotation_paths(self, split: str) -> list[Path]:
        """Absolute annotation file paths of ``split`` (as configured; may not exist)."""
        info = self.config.build_info.annotations.get(split)
        if info is None:
            return []
        storage = info.get("storage") if isinstance(info, DictConfig) else info
        return [resolve_storage(p) for p in _as_list(storage)]

    def media_root(self) -> Path:
        """The folder images / videos are read from."""
        info = self.config.build_info.get(self.data_type)
        storage = info.get("storage") if isinstance(info, DictConfig) else info
        if storage is None:
            raise ConfigError(
                f"datasets.{self.name}.build_info.{self.data_type}.storage is not set "
                f"(the folder that holds the {self.data_type})"
            )
        return resolve_storage(storage)

    def splits(self) -> list[str]:
        return [s for s in self.config.build_info.annotations if s in SPLITS]

    # -- building ------------------------------------------------------------------------
    def build_datasets(self) -> dict:
        """``{split: dataset}`` for every configured split whose files are present."""
        self.build_processors()
        split_names = self.splits()
        if not split_names:
            raise ConfigError(
                f"datasets.{self.name}.build_info.annotations has no train/val/test split "
                f"(got: {', '.join(self.config.build_info.annotations) or 'nothing'})"
            )
        root = self.media_root()
        if not root.exists():
            raise DataError(f"{self.name}: {self.data_type} folder not found: {root}; {self.download_hint}")
        datasets, missing = {}, {}
        for split in split_names:
            paths = self.annotation_paths(split)
            absent = [p for p in paths if not p.is_file()]
            if absent or not paths:
                missing[split] = absent or ["(no storage configured)"]
                continue
            datasets[split] = self.with_feature_cache(split, self.build_split(split, paths, root))
        if not datasets:
            files = "; ".join(f"{s}: {', '.join(map(str, p))}" for s, p in missing.items())
            raise DataError(f"{self.name}: annotation files not found ({files}); {self.download_hint}")
        for split, paths in missing.items():
            logger.warning("%s: split '%s' left out, missing %s", self.name, split, ", ".join(map(str, paths)))
        return datasets

    build = build_datasets  # LAVIS name

    def with_feature_cache(self, split: str, dataset):
        """``dataset``, reading ``<feature_cache>/<split>`` instead of images when the block
        sets ``feature_cache`` (every builder's splits pass here)."""
        if self.config.get("feature_cache"):
            from lavislike.datasets.feature_cache import attach_feature_cache

            attach_feature_cache(dataset, resolve_storage(self.config.feature_cache) / split,
                                 f"datasets.{self.name}.feature_cache ({split})")
        return dataset

    def build_split(self, split: str, ann_paths: list[Path], root: Path):
        """One split's dataset (override for corpus-specific construction)."""
        is_train = split == "train"
        cls = self.train_dataset_cls if is_train else self.eval_dataset_cls
        if cls is None:
            raise ConfigError(f"dataset builder {type(self).__name__} has no {'train' if is_train else 'eval'}_dataset_cls")
        key = "train" if is_train else "eval"
        dataset = cls(
            vis_processor=self.vis_processors[key],
            text_processor=self.text_processors[key],
            vis_root=root,
            ann_paths=ann_paths,
            strict=bool(self.config.get("strict", False)),
            name=f"{self.name}/{split}",
        )
        dataset.eval_files = self.eval_files(split)
        return dataset

    def eval_files(self, split: str) -> dict[str, Path]:
        """Ground-truth files of ``split`` for metrics (``build_info.annotations.<split>.eval_files``).

        Conventional names: ``coco_gt`` (COCO captions json for pycocoevalcap),
        ``vqa_questions`` / ``vqa_annotations`` (VQAv2 format), ``answer_list``.
        Datasets carry them as ``dataset.eval_files``; tasks read them from there.
        """
        info = self.config.build_info.annotations.get(split)
        files = info.get("eval_files") if isinstance(info, DictConfig) else None
        return {str(k): resolve_storage(v) for k, v in (files or {}).items()}


# -- module helpers ---------------------------------------------------------------------
def registered_name(cls: type) -> str:
    """The DATASETS name ``cls`` is registered under (its class name if none)."""
    for name in DATASETS.names():
        if DATASETS.get(name) is cls:
            return name
    return cls.__name__


def dataset_block(name: str, overrides: Any = None) -> DictConfig:
    """The merged ``datasets.<name>`` block: schema <- default YAML <- ``overrides``."""
    from lavislike.config.loader import dataset_config

    return dataset_config(name, overrides)


def load_builder(name: str, overrides: Any = None) -> BaseDatasetBuilder:
    """The builder registered as ``name``, configured from its defaults + ``overrides``."""
    return DATASETS.get(name).from_config(dataset_block(name, overrides), name)


def load_datasets(name: str, overrides: Any = None) -> dict:
    """``{split: dataset}`` of corpus ``name`` (LAVIS ``load_dataset``)."""
    return load_builder(name, overrides).build_datasets()
