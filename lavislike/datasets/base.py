"""Dataset classes shared by every corpus, reading LAVIS-format annotation files.

Every class takes the same constructor arguments (what builders pass)::

    DatasetCls(vis_processor, text_processor, vis_root, ann_paths, strict=False, name="coco_caption")

* ``ann_paths``: one or more ``.json`` (a list of rows, or ``{"annotations": [...]}``) or
  ``.jsonl`` files; their rows are concatenated.
* ``vis_root``: folder that the rows' ``image`` / ``video`` paths are relative to.
* ``vis_processor``: PIL image -> (3, H, W) tensor, or for videos, path -> (T, 3, H, W).
* ``text_processor``: str -> str (or ``{"text_input", "text_output"}`` for prefix-LM).

Row formats (LAVIS's) and the items they give (see :mod:`lavislike.datasets.collate`):

=====================  ==========================================  =========================================
class                  row keys                                    item keys
=====================  ==========================================  =========================================
CaptionDataset         image, caption, [image_id]                  image, text_input, image_id (dense int)
CaptionEvalDataset     image, [image_id]                           image, image_id, instance_id
RetrievalDataset       image, caption, [image_id]                  image, text_input, image_id, instance_id
RetrievalEvalDataset   image, caption (list)                       image, index, image_id; attributes text,
                                                                   image, txt2img, img2txt
VQADataset             image, question, answer (str or list),      image, text_input, text_output (most
                       [question_id]                               weighted answer), answers, weights,
                                                                   question_id
VQAEvalDataset         image, question, [question_id], [answer]    image, text_input, question_id,
                                                                   instance_id, [answers, weights]
Video*Dataset          the same with ``video`` instead of image    ``video`` instead of ``image``
=====================  ==========================================  =========================================

Bad rows (a required key missing or empty, a caption / question without a word) are
dropped at construction and kept in ``bad_rows``, named by the annotation file and the
file's own row; bad media (missing / truncated / corrupt file) and captions without a word
give a :class:`SkippedSample` item; ``strict=True`` raises :class:`DataError` instead.
Subclasses for a specific corpus override :meth:`BaseDataset.eval_image_id` (how an eval
row's integer image id is derived) or :meth:`BaseDataset.get_item`.
"""
from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from torch.utils.data import Dataset

from lavislike.datasets.bad_data import BadSampleError, SkippedSample, strict_error
from lavislike.datasets.collate import collate
from lavislike.errors import DataError

_WORD = re.compile(r"\w")


# -- files -------------------------------------------------------------------------------
def annotation_rows(path: str | os.PathLike) -> list[tuple[str, Any]]:
    """``(where, row)`` for each row of an annotation file; ``where`` is the file's own
    numbering: ``row <i>`` (0-based position in its list) or ``line <n>`` for ``.jsonl``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as fh:
                return [(f"line {n}", json.loads(line)) for n, line in enumerate(fh, 1) if line.strip()]
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"annotation file {path} is not valid JSON: {exc}") from None
    if isinstance(data, dict):
        if "annotations" not in data:
            raise DataError(f"annotation file {path}: expected a list of rows or a dict with 'annotations'")
        data = data["annotations"]
    if not isinstance(data, list):
        raise DataError(f"annotation file {path}: expected a list of rows, got {type(data).__name__}")
    return [(f"row {i}", row) for i, row in enumerate(data)]


def load_image(path: str | os.PathLike):
    """Open an image as RGB, fully decoded; a bad file raises :class:`BadSampleError`."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise BadSampleError(str(path), "missing file")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() forces the full decode: truncation shows here
    except UnidentifiedImageError:
        raise BadSampleError(str(path), "not a readable image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadSampleError(str(path), f"corrupt or truncated image ({exc})") from None


def _has_value(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) > 0
    return True


def _int_like(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


# -- base ----------------------------------------------------------------------------------
class BaseDataset(Dataset):
    """Rows + processors + bad-data policy; subclasses implement :meth:`get_item`.

    Attributes:
        annotation: the kept rows (each with an ``instance_id``).
        bad_rows: rows dropped at construction, as :class:`SkippedSample`.
        eval_files: ground-truth files for metrics (``coco_gt``, ``vqa_questions``,
            ``vqa_annotations``, ``answer_list``), from the builder's ``eval_files``.
    """

    required_keys: tuple[str, ...] = ()
    text_keys: tuple[str, ...] = ()  # a row whose text here has no word is bad (lists: per caption)
    media_key = "image"
    # set by datasets.<name>.feature_cache: items carry the cached ``image_features``
    feature_cache = None

    def __init__(
        self,
        vis_processor: Callable | None,
        text_processor: Callable | None,
        vis_root: str | os.PathLike,
        ann_paths: str | os.PathLike | Sequence[str | os.PathLike],
        strict: bool = False,
        name: str = "",
    ):
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.vis_root = str(vis_root)
        self.strict = strict
        self.name = name or type(self).__name__
        if isinstance(ann_paths, (str, os.PathLike)):
            ann_paths = [ann_paths]
        self.ann_paths = [str(p) for p in ann_paths]
        self.bad_rows: list[SkippedSample] = []
        self.row_origins: list[str] = []  # "<annotation file> row <i>" of each kept row
        self.eval_files: dict[str, Path] = {}  # metric ground truth, set by the builder
        self.annotation = self._load_rows()
        if len(self.row_origins) != len(self.annotation):  # a subclass read or reshaped the rows
            self.row_origins = []
        for i, ann in enumerate(self.annotation):
            ann["instance_id"] = str(i)
        self.setup()

    def raw_rows(self) -> Iterator[tuple[str, Any]]:
        """``("<annotation file> row <i>", row)`` for every row, before checking."""
        for path in self.ann_paths:
            for where, ann in annotation_rows(path):
                yield f"{path} {where}", ann

    def _load_rows(self) -> list[dict]:
        rows = []
        for where, ann in self.raw_rows():
            reason = self.check_row(ann)
            if reason is None:
                rows.append(ann)
                self.row_origins.append(where)
                continue
            bad = SkippedSample(where, reason, self.name)
            if self.strict:
                raise strict_error(bad)
            self.bad_rows.append(bad)
        return rows

    def check_row(self, ann: Any) -> str | None:
        """Why a row cannot be used (None when it can)."""
        if not isinstance(ann, dict):
            return f"row is a {type(ann).__name__}, not an object"
        for key in self.required_keys:
            if key in self.text_keys and isinstance(ann.get(key), str):
                continue  # present: judged below
            if not _has_value(ann.get(key)):
                return f"missing field '{key}'"
        for key in self.text_keys:
            if isinstance(ann.get(key), str) and not _WORD.search(ann[key]):
                return f"empty {key} {ann[key]!r}"
        return None

    def setup(self) -> None:
        """Hook run after the rows are loaded (index maps and the like)."""

    def row_origin(self, index: int) -> str:
        """``<annotation file> row <i>`` that item ``index`` came from ('' when unknown)."""
        return self.row_origins[index] if 0 <= index < len(self.row_origins) else ""

    # -- items ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.annotation)

    def __getitem__(self, index: int) -> dict | SkippedSample:
        try:
            item = self.get_item(index)
            if self.feature_cache is not None:
                item["image_features"] = item.pop(self.media_key)
            return item
        except BadSampleError as exc:
            origin = self.row_origin(index)
            skipped = SkippedSample(exc.path, exc.reason, self.name, index, "" if exc.path == origin else origin)
            if self.strict:
                raise strict_error(skipped) from None
            return skipped

    def get_item(self, index: int) -> dict:
        """The item for row ``index``; raise :class:`BadSampleError` for bad data."""
        raise TypeError(f"{type(self).__name__} must define get_item(index)")

    collater = staticmethod(collate)  # LAVIS runners call dataset.collater

    def set_processors(self, vis_processor: Callable | None = None, text_processor: Callable | None = None) -> None:
        """Swap processors (e.g. to those a model type prescribes)."""
        if vis_processor is not None:
            self.vis_processor = vis_processor
        if text_processor is not None:
            self.text_processor = text_processor

    # -- helpers for subclasses ----------------------------------------------------------
    def media_path(self, ann: dict) -> str:
        return os.path.join(self.vis_root, ann[self.media_key])

    def load_media(self, ann: dict):
        """Read and process the row's image or video."""
        path = self.media_path(ann)
        if self.feature_cache is not None:
            feats = self.feature_cache.features(str(ann[self.media_key]))
            if feats is None:
                raise BadSampleError(path, "unreadable when the feature cache was made")
            return feats
        if self.media_key == "image":
            image = load_image(path)
            return self.vis_processor(image) if self.vis_processor else image
        if not os.path.isfile(path):
            raise BadSampleError(path, "missing file")
        return self.vis_processor(path) if self.vis_processor else path

    def process_text(self, text: Any, ann: dict) -> Any:
        """Run the text processor; a caption without a word is bad data (named by its row)."""
        if not isinstance(text, str) or not _WORD.search(text):
            where = self.row_origin(int(ann["instance_id"])) or self.media_path(ann)
            raise BadSampleError(where, f"empty caption/question {text!r}")
        return self.text_processor(text) if self.text_processor else text

    @staticmethod
    def text_fields(processed: Any) -> dict:
        """``{"text_input": ...}`` from a processor result (str or prefix-LM dict)."""
        return dict(processed) if isinstance(processed, dict) else {"text_input": processed}

    def eval_image_id(self, ann: dict, index: int) -> int | str:
        """Integer id of an eval row's image: ``image_id`` if integer-like, else ``index``."""
        value = _int_like(ann.get("image_id"))
        return value if value is not None else ann.get("image_id", index)

    def dense_image_ids(self) -> dict:
        """Map each distinct image (``image_id`` or path) to 0, 1, 2, ... in row order."""
        ids: dict = OrderedDict()
        for ann in self.annotation:
            ids.setdefault(self._image_key(ann), len(ids))
        return ids

    def _image_key(self, ann: dict):
        return ann.get("image_id", ann.get(self.media_key))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, rows={len(self)}, bad_rows={len(self.bad_rows)})"


# -- captions --------------------------------------------------------------------------------
class CaptionDataset(BaseDataset):
    """Image-caption pairs for training (one item per caption)."""

    required_keys = ("image", "caption")
    text_keys = ("caption",)

    def setup(self) -> None:
        self.img_ids = self.dense_image_ids()

    def get_item(self, index: int) -> dict:
        ann = self.annotation[index]
        media = self.load_media(ann)
        text = self.text_fields(self.process_text(ann["caption"], ann))
        return {self.media_key: media, **text, "image_id": self.img_ids[self._image_key(ann)]}


class CaptionEvalDataset(BaseDataset):
    """One item per image, for generating captions."""

    required_keys = ("image",)

    def get_item(self, index: int) -> dict:
        ann = self.annotation[index]
        return {
            self.media_key: self.load_media(ann),
            "image_id": self.eval_image_id(ann, index),
            "instance_id": ann["instance_id"],
        }


# -- retrieval -------------------------------------------------------------------------------
class RetrievalDataset(CaptionDataset):
    """Image-caption pairs for retrieval fine-tuning; ``image_id`` marks same-image positives."""

    def get_item(self, index: int) -> dict:
        item = super().get_item(index)
        item["instance_id"] = self.annotation[index]["instance_id"]
        return item


class RetrievalEvalDataset(BaseDataset):
    """Images as items; all captions processed up front with the index maps.

    Attributes:
        text: processed captions, text id = position.
        image: image paths (relative to ``vis_root``), image id = position.
        txt2img: text id -> image id.
        img2txt: image id -> list of text ids.
    """

    required_keys = ("image", "caption")
    text_keys = ("caption",)

    def setup(self) -> None:
        self.text, self.image, self.txt2img, self.img2txt = [], [], {}, {}
        for img_id, ann in enumerate(self.annotation):
            self.image.append(ann[self.media_key])
            self.img2txt[img_id] = []
            captions = ann["caption"] if isinstance(ann["caption"], list) else [ann["caption"]]
            for caption in captions:
                try:
                    text = self.process_text(caption, ann)
                except BadSampleError as exc:  # drop the caption, keep the ids dense
                    bad = SkippedSample(exc.path, exc.reason, self.name)
                    if self.strict:
                        raise strict_error(bad) from None
                    self.bad_rows.append(bad)
                    continue
                self.txt2img[len(self.text)] = img_id
                self.img2txt[img_id].append(len(self.text))
                self.text.append(self.text_fields(text)["text_input"])

    def get_item(self, index: int) -> dict:
        return {self.media_key: self.load_media(self.annotation[index]), "index": index, "image_id": index}


# -- VQA ---------------------------------------------------------------------------------------
def answer_weights(answers: Any) -> tuple[list[str], list[float]]:
    """Distinct answers and weights: each occurrence adds ``1 / len(answers)`` (LAVIS)."""
    answers = [answers] if isinstance(answers, str) else list(answers)
    counts: dict[str, int] = {}
    for ans in answers:
        counts[ans] = counts.get(ans, 0) + 1
    return list(counts), [c / len(answers) for c in counts.values()]


class VQADataset(BaseDataset):
    """Question-answer pairs for training; ``text_output`` is the most weighted answer."""

    required_keys = ("image", "question", "answer")
    text_keys = ("question",)

    def get_item(self, index: int) -> dict:
        ann = self.annotation[index]
        media = self.load_media(ann)
        question = self.text_fields(self.process_text(ann["question"], ann))["text_input"]
        answers, weights = answer_weights(ann["answer"])
        best = answers[max(range(len(weights)), key=weights.__getitem__)]
        return {
            self.media_key: media,
            "text_input": question,
            "text_output": best,
            "answers": answers,
            "weights": weights,
            "question_id": ann.get("question_id", ann["instance_id"]),
        }


class VQAEvalDataset(BaseDataset):
    """Questions for answer generation; ground-truth answers ride along when present."""

    required_keys = ("image", "question")
    text_keys = ("question",)

    def get_item(self, index: int) -> dict:
        ann = self.annotation[index]
        item = {
            self.media_key: self.load_media(ann),
            "text_input": self.text_fields(self.process_text(ann["question"], ann))["text_input"],
            "question_id": ann.get("question_id", ann["instance_id"]),
            "instance_id": ann["instance_id"],
        }
        if _has_value(ann.get("answer")):
            item["answers"], item["weights"] = answer_weights(ann["answer"])
        return item


# -- video -------------------------------------------------------------------------------------
class VideoCaptionDataset(CaptionDataset):
    required_keys = ("video", "caption")
    media_key = "video"


class VideoCaptionEvalDataset(CaptionEvalDataset):
    required_keys = ("video",)
    media_key = "video"


class VideoQADataset(VQADataset):
    required_keys = ("video", "question", "answer")
    media_key = "video"


class VideoQAEvalDataset(VQAEvalDataset):
    required_keys = ("video", "question")
    media_key = "video"


class VideoRetrievalEvalDataset(RetrievalEvalDataset):
    required_keys = ("video", "caption")
    media_key = "video"
