"""Reading the user's own data, whatever layout it comes in, as rows in our field names.

Four layouts give the same thing, a :class:`Source` (rows tagged with where each came from,
plus where the media are):

* a JSONL file, a JSON file holding a list of rows, or a CSV file, one row per sample;
  media paths relative to an images root (default: the file's folder) or absolute;
* a folder in the Hugging Face ``imagefolder`` convention: ``metadata.jsonl`` or
  ``metadata.csv`` with a ``file_name`` column, next to the images (split subfolders
  ``train/``, ``validation/`` (or ``val/``), ``test/`` each holding their own metadata are splits);
* a ``datasets`` dataset written with ``save_to_disk`` (a ``Dataset`` or ``DatasetDict``);
* the name of a ``datasets`` dataset already in the local Hugging Face cache.

Columns are found by name: each of our fields has a list of usual names (``caption`` or
``text``, ``answer`` or ``answers`` ...) and ``columns: {field: your_name}`` overrides it.
A configured or required column absent from a file is one :class:`DataError` naming the
file and the columns it has. Rows that lack a value, or are not valid JSON, are kept as
rows here; the dataset classes check them and report them by file and line.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from lavislike.common.suggest import did_you_mean
from lavislike.datasets.base import annotation_rows
from lavislike.errors import DataError

# our field -> the column names tried, in order, when the config names none
USUAL_NAMES: dict[str, tuple[str, ...]] = {
    "image": ("image", "file_name", "image_path", "filepath", "img"),
    "video": ("video", "file_name", "video_path", "filepath"),
    "caption": ("caption", "text", "captions", "sentence"),
    "question": ("question", "query", "prompt"),
    "answer": ("answer", "answers", "label"),
    "image_id": ("image_id", "img_id", "id"),
    "question_id": ("question_id", "qid"),
}
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
SPLIT_FOLDERS = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}
HF_DISK_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


@dataclass(frozen=True)
class InvalidRow:
    """A row that could not be read at all (the dataset reports ``reason``)."""

    reason: str


@dataclass
class Source:
    """Rows of one split, in our field names.

    Attributes:
        label: the file / folder / dataset name messages show.
        rows: ``(where, row)`` pairs; ``where`` is e.g. ``"data.csv line 7"``.
        media_root: folder relative media paths are under.
        hf: a ``datasets.Dataset`` holding the media (rows then carry ``_hf_index``).
        hf_column: its media column.
    """

    label: str
    rows: list[tuple[str, Any]]
    media_root: Path
    hf: Any = None
    hf_column: str | None = None

    def subset(self, keep: Iterable[int]) -> "Source":
        return replace(self, rows=[self.rows[i] for i in keep])


# -- column names -----------------------------------------------------------------------------
def resolve_columns(label: str, have: Iterable[str], wanted: dict[str, bool], configured: dict,
                    config_key: str) -> dict[str, str]:
    """``{our field: the source's column}`` for ``wanted`` (``{field: required}``).

    Raises:
        DataError: a configured column, or a required field with none of its usual names,
            is not among ``have`` (one line: the file and its columns).
    """
    have = list(dict.fromkeys(str(c) for c in have))
    unknown = sorted(set(configured) - set(USUAL_NAMES))
    if unknown:
        raise DataError(f"{config_key}: unknown field '{unknown[0]}'.{did_you_mean(unknown[0], USUAL_NAMES)} "
                        f"Fields: {', '.join(USUAL_NAMES)}")
    out = {}
    for ours, required in wanted.items():
        if ours in configured:
            name = str(configured[ours])
            if name not in have:
                raise DataError(f"{label}: no column '{name}' ({config_key}.{ours}); it has: "
                                f"{', '.join(have) or 'none'}.{did_you_mean(name, have)}")
            out[ours] = name
            continue
        found = next((n for n in USUAL_NAMES[ours] if n in have), None)
        if found is not None:
            out[ours] = found
        elif required:
            raise DataError(f"{label}: no {ours} column (looked for {', '.join(USUAL_NAMES[ours])}; set "
                            f"{config_key}.{ours}=<column>); it has: {', '.join(have) or 'none'}")
    return out


def rename(row: Any, mapping: dict[str, str]) -> Any:
    """A raw row in our field names (non-dict rows pass through for the checks to report)."""
    if not isinstance(row, dict):
        return row
    out = {}
    for ours, theirs in mapping.items():
        value = row.get(theirs)
        if isinstance(value, str):
            value = value.strip()
        if value is not None and value != "":
            out[ours] = value
    return out


# -- files ------------------------------------------------------------------------------------
def _jsonl_rows(path: Path) -> list[tuple[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path} line {n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                rows.append((f"{path} line {n}", InvalidRow(f"not valid JSON ({exc.msg})")))
    return rows


def _json_rows(path: Path) -> list[tuple[str, Any]]:
    return [(f"{path} {where}", row) for where, row in annotation_rows(path)]  # as LAVIS files are read


def _csv_rows(path: Path) -> tuple[list[tuple[str, Any]], list[str]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        header = list(reader.fieldnames or [])
        rows = []
        for row in reader:
            rows.append((f"{path} line {reader.line_num}", {k: v for k, v in row.items() if k is not None}))
    return rows, header


def read_table(path: Path) -> tuple[list[tuple[str, Any]], list[str]]:
    """``(rows, columns)`` of a JSONL / JSON / CSV / TSV file."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            return _csv_rows(path)
        rows = _jsonl_rows(path) if suffix == ".jsonl" else _json_rows(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}") from None
    columns = list(dict.fromkeys(k for _, r in rows if isinstance(r, dict) for k in r))
    return rows, columns


TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


# -- reading one source ------------------------------------------------------------------------
@dataclass
class Request:
    """What a builder asks of a source: fields (``{field: required}``), column overrides,
    the images root, and where the overrides live in the config (for messages)."""

    wanted: dict[str, bool]
    columns: dict = field(default_factory=dict)
    images: str | None = None
    config_key: str = "columns"


def read_source(spec: str, request: Request) -> dict[str, Source]:
    """``{split: Source}`` of ``spec``; a single table gives ``{"train": ...}`` (the caller
    names its split), a layout that carries splits gives each of them."""
    path = Path(str(spec)).expanduser()
    if path.is_file():
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise DataError(f"{path}: not a JSONL, JSON or CSV file (suffix {path.suffix or 'none'}); "
                            f"or give an imagefolder / save_to_disk folder")
        return {"train": _table_source(path, path.parent, request)}
    if path.is_dir():
        metadata = _metadata_file(path)
        if metadata is not None:
            return {"train": _table_source(metadata, path, request, images_here=True)}
        splits = {s: m for s, subs in SPLIT_FOLDERS.items() for sub in subs
                  if (m := _metadata_file(path / sub)) is not None}
        if splits:
            return {s: _table_source(m, m.parent, request, images_here=True) for s, m in splits.items()}
        if any((path / m).is_file() for m in HF_DISK_MARKERS):
            return _hf_sources(_load_from_disk(path), str(path), path, request)
        raise DataError(f"{path}: a folder without metadata.jsonl / metadata.csv (imagefolder) or a "
                        f"save_to_disk dataset (dataset_info.json / dataset_dict.json)")
    text = str(spec)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or path.suffix.lower() in TABLE_SUFFIXES:
        raise DataError(f"data not found: {path}")  # a path, not a `datasets` name (`name` or `owner/name`)
    return _hf_sources(_load_by_name(str(spec)), str(spec), Path.cwd(), request)


def _metadata_file(folder: Path) -> Path | None:
    return next((folder / m for m in METADATA_FILES if (folder / m).is_file()), None)


def _media_field(request: Request) -> str:
    return "video" if "video" in request.wanted else "image"


def _table_source(path: Path, default_root: Path, request: Request, images_here: bool = False) -> Source:
    rows, columns = read_table(path)
    configured = dict(request.columns)
    media = _media_field(request)
    if images_here and media not in configured and "file_name" in columns:
        configured[media] = "file_name"  # the imagefolder convention
    mapping = resolve_columns(str(path), columns, request.wanted, configured, request.config_key)
    root = Path(request.images).expanduser() if request.images and not images_here else default_root
    return Source(str(path), [(w, rename(r, mapping)) for w, r in rows], root.resolve())


def _load_from_disk(path: Path):
    datasets = _import_datasets()
    try:
        return datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises several kinds for a damaged folder
        raise DataError(f"{path}: cannot be read with datasets.load_from_disk ({type(exc).__name__}: {exc})") from None


def _load_by_name(name: str):
    datasets = _import_datasets()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # never download at run time
    try:
        return datasets.load_dataset(name)
    except Exception as exc:  # not in the local cache, or not a dataset at all
        raise DataError(f"data '{name}' is not a file or folder, nor a `datasets` dataset in the local "
                        f"cache ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("reading a `datasets` dataset needs the datasets package: "
                        "pip install 'lavislike[hf]' (or pip install datasets)") from None
    return datasets


def _hf_sources(obj, label: str, root: Path, request: Request) -> dict[str, Source]:
    if hasattr(obj, "column_names") and not isinstance(obj.column_names, dict):
        return {"train": _hf_source(obj, label, root, request)}
    out = {}
    for ours, names in SPLIT_FOLDERS.items():
        name = next((n for n in names if n in obj), None)
        if name is not None:
            out[ours] = _hf_source(obj[name], f"{label}[{name}]", root, request)
    if not out:
        raise DataError(f"{label}: no train / validation / test split (it has: {', '.join(obj)})")
    return out


def _hf_source(ds, label: str, root: Path, request: Request) -> Source:
    mapping = resolve_columns(label, ds.column_names, request.wanted, dict(request.columns), request.config_key)
    media = _media_field(request)
    column = mapping[media]
    stored = type(ds.features[column]).__name__ in ("Image", "Video")  # bytes inside the dataset
    text_mapping = {f: c for f, c in mapping.items() if not (f == media and stored)}
    table = ds.select_columns(list(dict.fromkeys(text_mapping.values()))).to_list()
    rows = []
    for i, raw in enumerate(table):
        row = rename(raw, text_mapping)
        if stored:
            row[media] = f"{label}[{i}]"  # what reports show; the media come from the dataset
            row["_hf_index"] = i
        rows.append((f"{label} row {i}", row))
    if stored:
        ds = ds.cast_column(column, type(ds.features[column])(decode=False))
    base = Path(request.images).expanduser() if request.images else root
    return Source(label, rows, base.resolve(), ds if stored else None, column if stored else None)
