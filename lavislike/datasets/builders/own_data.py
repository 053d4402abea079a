"""Your own data, no code: ``own_caption``, ``own_vqa`` and ``own_retrieval``.

Point ``data`` at a JSONL / JSON / CSV file, an ``imagefolder`` folder, a
``save_to_disk`` folder or the name of a cached ``datasets`` dataset (see
:mod:`lavislike.datasets.own_sources`)::

    datasets:
      own_caption:
        data: /data/pets/train.jsonl       # {"image": "cats/1.jpg", "caption": "a cat on a mat"}
        val: /data/pets/val.jsonl          # optional; else val_ratio of `data`'s images
        images: /data/pets/images          # optional root of relative paths (default: the file's folder)
        columns: {caption: description}    # optional: your column names

Splits: ``val`` / ``test`` given as their own files, or carried by the layout (split
subfolders, a ``DatasetDict``), or else ``val_ratio`` of ``data``'s images (all rows of
one image on the same side) drawn with ``split_seed`` - the same split in every process.
Every row is checked as for the other corpora: a row missing a field (or a JSONL line
that is not JSON) is skipped, kept in ``dataset.bad_rows`` (logged when the run starts) as
``<file> line <n>``; ``strict: true`` fails on it instead. ``data_type: videos`` reads
videos (the ``video`` / ``file_name`` column) for captioning and QA.

Eval splits of captioning and retrieval hold one row per image with all its captions
(the references of the caption metrics / the positives of recall@k).
"""
from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional

from lavislike.datasets import base
from lavislike.datasets.bad_data import BadSampleError
from lavislike.datasets.builder import BaseDatasetBuilder, DatasetConfig
from lavislike.datasets.own_sources import InvalidRow, Request, Source, read_source
from lavislike.errors import ConfigError, DataError
from lavislike.registry import DATASETS


@dataclass
class OwnDataConfig(DatasetConfig):
    """Keys of an ``own_*`` block (plus the usual ``strict``, processors, ...)."""

    data: str = ""  # file, imagefolder / save_to_disk folder, or cached `datasets` name
    val: Optional[str] = None  # the validation data (same kinds); None: split `data`
    test: Optional[str] = None
    images: Optional[str] = None  # root of relative media paths (default: the file's folder)
    val_ratio: float = 0.1  # share of `data`'s images held out for validation when no `val`
    split_seed: int = 42
    columns: Dict[str, str] = field(default_factory=dict)  # our field -> your column name


# -- dataset classes ------------------------------------------------------------------------------
class OwnRows:
    """Mixed in front of a :mod:`lavislike.datasets.base` class: rows come from a
    :class:`Source` (already in our field names) instead of LAVIS annotation files."""

    def __init__(self, vis_processor, text_processor, source: Source, strict: bool = False, name: str = ""):
        self.source = source
        super().__init__(vis_processor, text_processor, source.media_root, [source.label], strict=strict, name=name)

    def raw_rows(self):
        return ((where, dict(ann) if isinstance(ann, dict) else ann) for where, ann in self.source.rows)

    def check_row(self, ann):
        return ann.reason if isinstance(ann, InvalidRow) else super().check_row(ann)

    def _load_rows(self) -> list[dict]:
        return self.arrange(super()._load_rows())

    def arrange(self, rows: list[dict]) -> list[dict]:
        """Hook: reshape the checked rows (eval splits group them per image)."""
        return rows

    def load_media(self, ann: dict):
        if "_hf_index" not in ann or self.feature_cache is not None:
            return super().load_media(ann)
        value = self.source.hf[int(ann["_hf_index"])][self.source.hf_column]
        if self.media_key != "image":
            raise BadSampleError(ann[self.media_key], "videos stored inside a `datasets` dataset are not "
                                 "supported; store their paths in a string column")
        image = decode_image(value, ann[self.media_key])
        return self.vis_processor(image) if self.vis_processor else image


def decode_image(value: Any, where: str):
    """A ``datasets`` Image value (``{"bytes", "path"}``) as an RGB PIL image."""
    from PIL import Image, UnidentifiedImageError

    value = value or {}
    if value.get("bytes"):
        try:
            with Image.open(io.BytesIO(value["bytes"])) as img:
                return img.convert("RGB")
        except UnidentifiedImageError:
            raise BadSampleError(where, "not a readable image") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise BadSampleError(where, f"corrupt or truncated image ({exc})") from None
    if value.get("path"):
        return base.load_image(value["path"])
    raise BadSampleError(where, "no image")


def group_by_image(rows: list[dict], media_key: str) -> list[dict]:
    """One row per image (``image_id``, else the path) with the list of its captions."""
    groups: dict = {}
    for row in rows:
        key = row.get("image_id", row.get(media_key))
        if key not in groups:
            groups[key] = {**row, "caption": []}
        caption = row["caption"]
        groups[key]["caption"].extend(caption if isinstance(caption, list) else [caption])
    return list(groups.values())


class OwnCaptionEval(OwnRows, base.CaptionEvalDataset):
    """One item per image; its captions are the references (``image_id`` = position)."""

    required_keys = ("image", "caption")

    def arrange(self, rows):
        return group_by_image(rows, self.media_key)

    def eval_image_id(self, ann: dict, index: int) -> int:
        return index


class OwnRetrievalEval(OwnRows, base.RetrievalEvalDataset):
    def arrange(self, rows):
        return group_by_image(rows, self.media_key)


class OwnVideoCaptionEval(OwnCaptionEval):
    required_keys = ("video", "caption")
    media_key = "video"


class OwnVideoRetrievalEval(OwnRows, base.VideoRetrievalEvalDataset):
    def arrange(self, rows):
        return group_by_image(rows, self.media_key)


# module-level classes (DataLoader workers pickle datasets by class name)
class OwnCaption(OwnRows, base.CaptionDataset):
    pass


class OwnVideoCaption(OwnRows, base.VideoCaptionDataset):
    pass


class OwnVQA(OwnRows, base.VQADataset):
    pass


class OwnVQAEval(OwnRows, base.VQAEvalDataset):
    pass


class OwnVideoQA(OwnRows, base.VideoQADataset):
    pass


class OwnVideoQAEval(OwnRows, base.VideoQAEvalDataset):
    pass


class OwnRetrieval(OwnRows, base.RetrievalDataset):
    pass


class OwnVideoRetrieval(OwnRetrieval):
    required_keys = ("video", "caption")
    media_key = "video"


# -- builders ---------------------------------------------------------------------------------
class OwnDataBuilder(BaseDatasetBuilder):
    """Builds train / val / test from the block's ``data`` / ``val`` / ``test``.

    Subclasses set ``FIELDS`` (``{our field: required}``, the media field added by
    data type) and ``CLASSES`` (``{(data_type, "train" | "eval"): dataset class}``).
    """

    FIELDS: ClassVar[dict[str, bool]] = {}
    CLASSES: ClassVar[dict[tuple[str, str], type]] = {}

    def request(self) -> Request:
        media = "image" if self.data_type == "images" else "video"
        cfg = self.config
        return Request(wanted={media: True, **self.FIELDS, "image_id": False},
                       columns=dict(cfg.get("columns") or {}), images=cfg.get("images"),
                       config_key=f"datasets.{self.name}.columns")

    def sources(self) -> dict[str, Source]:
        cfg = self.config
        if not cfg.get("data"):
            raise ConfigError(f"datasets.{self.name}.data is not set: give your annotation file (JSONL / JSON "
                              f"/ CSV), imagefolder or save_to_disk folder, or a cached `datasets` name")
        req = self.request()
        found = read_source(str(cfg.data), req)
        for split in ("val", "test"):
            if cfg.get(split):
                found[split] = read_source(str(cfg[split]), req)["train"]
        if "train" not in found:
            raise DataError(f"datasets.{self.name}.data: {cfg.data} has no train split (found: {', '.join(found)})")
        ratio = float(cfg.get("val_ratio") or 0.0)
        if "val" not in found and ratio > 0:
            found["train"], found["val"] = split_by_image(found["train"], ratio, int(cfg.get("split_seed", 42)))
        return found

    def build_datasets(self) -> dict:
        self.build_processors()
        out = {}
        for split, source in self.sources().items():
            kind = "train" if split == "train" else "eval"
            cls = self.CLASSES[(self.data_type, kind)]
            ds = cls(self.vis_processors[kind], self.text_processors[kind], source,
                     strict=bool(self.config.get("strict", False)), name=f"{self.name}/{split}")
            if not len(ds):
                raise DataError(f"{self.name}/{split}: no usable row in {source.label}"
                                + (f" (first problem: {ds.bad_rows[0].describe()})" if ds.bad_rows else ""))
            check_media_root(ds, source)  # its bad rows are reported by the runner (bad_data.rows_report)
            out[split] = self.with_feature_cache(split, ds)
        return out


def check_media_root(ds, source: Source, probe: int = 20) -> None:
    """Fail now when none of the first rows' media files exist: a wrong images root would
    otherwise make every sample a skipped one."""
    rows = [a for a in ds.annotation[:probe] if "_hf_index" not in a]
    if rows and not any(os.path.isfile(ds.media_path(a)) for a in rows):
        raise DataError(f"{ds.name}: none of the first {len(rows)} {ds.media_key} files of {source.label} exist "
                        f"(e.g. {ds.media_path(rows[0])}); set the folder they are relative to with --images "
                        f"(datasets.{ds.name.split('/')[0]}.images)")


def split_by_image(source: Source, ratio: float, seed: int) -> tuple[Source, Source]:
    """``(train, val)``: ``ratio`` of the distinct images (at least one) to val, drawn with ``seed``."""
    keys = [str(row.get("image_id", row.get("image", row.get("video", where))) if isinstance(row, dict) else where)
            for where, row in source.rows]
    distinct = list(dict.fromkeys(keys))
    if len(distinct) < 2:
        raise DataError(f"{source.label}: {len(distinct)} image(s), too few to hold some out for validation; "
                        f"give a val file (--val / datasets.<name>.val) or set val_ratio=0")
    order = distinct[:]
    random.Random(seed).shuffle(order)
    n_val = min(len(order) - 1, max(1, round(ratio * len(order))))
    held = set(order[:n_val])
    val = [i for i, k in enumerate(keys) if k in held]
    train = [i for i, k in enumerate(keys) if k not in held]
    return source.subset(train), source.subset(val)


@DATASETS.register("own_caption", config=OwnDataConfig)
class OwnCaptionBuilder(OwnDataBuilder):
    """Your image (or video) captions: caption fine-tuning, CIDEr / BLEU-4 on val."""

    FIELDS = {"caption": True}
    CLASSES = {("images", "train"): OwnCaption, ("images", "eval"): OwnCaptionEval,
               ("videos", "train"): OwnVideoCaption, ("videos", "eval"): OwnVideoCaptionEval}
    DEFAULT_CONFIGS = {"default": "own_caption.yaml"}


@DATASETS.register("own_vqa", config=OwnDataConfig)
class OwnVQABuilder(OwnDataBuilder):
    """Your questions and answers (one answer, or a list of annotators' answers)."""

    FIELDS = {"question": True, "answer": True, "question_id": False}
    CLASSES = {("images", "train"): OwnVQA, ("images", "eval"): OwnVQAEval,
               ("videos", "train"): OwnVideoQA, ("videos", "eval"): OwnVideoQAEval}
    DEFAULT_CONFIGS = {"default": "own_vqa.yaml"}


@DATASETS.register("own_retrieval", config=OwnDataConfig)
class OwnRetrievalBuilder(OwnDataBuilder):
    """Your image-text pairs for retrieval (rows of one image are each other's positives)."""

    FIELDS = {"caption": True}
    CLASSES = {("images", "train"): OwnRetrieval, ("images", "eval"): OwnRetrievalEval,
               ("videos", "train"): OwnVideoRetrieval, ("videos", "eval"): OwnVideoRetrievalEval}
    DEFAULT_CONFIGS = {"default": "own_retrieval.yaml"}
