"""``download(name, ...)``: fetch a corpus's annotation files and media into the cache.

Nothing here runs at import time or when a model or dataset is built: only an explicit
call (``lavislike download <name>``) touches the network.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from lavislike.common.paths import cache_dir
from lavislike.common.suggest import did_you_mean
from lavislike.datasets.download import archive as archive_mod
from lavislike.common.fetch import Checksums, fetch, is_complete, sidecar_path
from lavislike.datasets.download.sources import (
    CORPORA,
    Manual,
    Resource,
    UrlList,
    annotation_resources,
    corpus,
)
from lavislike.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

WHAT = ("annotations", "images", "videos")
SPLITS = ("train", "val", "test")


class ManualDownloadRequired(DataError):
    """Some files of the corpus have to be obtained by hand; ``steps`` says how."""

    def __init__(self, message: str, steps: str):
        super().__init__(message)
        self.steps = steps


@dataclass
class DownloadReport:
    """What a :func:`download` call did."""

    name: str
    fetched: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    manual: list[str] = field(default_factory=list)


def available() -> dict[str, dict[str, str]]:
    """Every downloadable corpus -> {"annotations": how, "media": how, "card": path}.

    ``how`` is ``"automatic"``, ``"crawl"`` (many small files from an index) or
    ``"manual"`` (see the card / the error of :func:`download`).
    """
    out = {}
    for name, entry in sorted(CORPORA.items()):
        kinds = {type(m).__name__ for m in entry.media}
        media = "manual" if "Manual" in kinds else "crawl" if "UrlList" in kinds else "automatic"
        try:
            anns = "automatic" if annotation_resources(name) else "manual"
        except DataError:
            anns = "missing config"
        out[name] = {"annotations": anns, "media": media, "card": entry.card}
    return out


def _check_choice(values: Iterable[str], valid: Sequence[str], what: str) -> tuple[str, ...]:
    values = (values,) if isinstance(values, str) else tuple(values)
    for v in values:
        if v not in valid:
            raise ConfigError(f"unknown {what} '{v}'.{did_you_mean(v, valid)} Valid: {', '.join(valid)}")
    return values


def _wanted(item_splits: tuple[str, ...], splits: tuple[str, ...] | None) -> bool:
    return splits is None or not item_splits or bool(set(item_splits) & set(splits))


def _resolve(root: Path, rel: str) -> Path:
    path = Path(rel).expanduser()
    return path if path.is_absolute() else root / path


def download(
    name: str,
    root: str | Path | None = None,
    splits: Iterable[str] | None = None,
    what: Iterable[str] = ("annotations", "images"),
    *,
    keep_archives: bool = False,
    workers: int = 16,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> DownloadReport:
    """Fetch the files of corpus ``name`` into ``root`` (default: the lavislike cache).

    Every file is verified (md5 / sha256 where published, else its length), resumed
    after an interruption and skipped when already present and verified; archives are
    extracted and then deleted (unless ``keep_archives``).

    Args:
        name: a corpus from :func:`available` (``coco_caption``, ``gqa``, ...).
        root: download root; storage paths of the default YAMLs are relative to it.
        splits: subset of ``train`` / ``val`` / ``test``; None for every split.
        what: any of ``annotations``, ``images``, ``videos`` (``images`` and
            ``videos`` both mean the corpus's media).
        keep_archives: keep downloaded zip / tar files after extraction.
        workers: parallel connections for per-image crawls (NoCaps).
        progress: called with (url, bytes so far, total bytes or None).

    Returns:
        A :class:`DownloadReport`.

    Raises:
        ConfigError: unknown corpus, split or ``what``.
        ManualDownloadRequired: media that must be fetched by hand are missing; its
            ``steps`` say exactly how (also in ``dataset_card/<name>.md``).
        DataError: a failed or corrupt download (run again to resume).

    Example:
        >>> download("coco_caption", what=["annotations"])  # doctest: +SKIP
    """
    entry = corpus(name)
    root = Path(root).expanduser() if root is not None else cache_dir()
    split_sel = None if splits is None else _check_choice(splits, SPLITS, "split")
    what = _check_choice(what, WHAT, "--what value")
    media_wanted = bool({"images", "videos"} & set(what))
    report = DownloadReport(name)

    def on_progress(url):
        return None if progress is None else (lambda done, total: progress(url, done, total))

    if "annotations" in what:
        for res in annotation_resources(name):
            if _wanted(res.splits, split_sel):
                _fetch_file(res, root, report, on_progress(res.url))
    manual_steps = []
    if media_wanted:
        for item in entry.media:
            if not _wanted(item.splits, split_sel):
                continue
            if isinstance(item, Resource):
                _fetch_resource(item, root, report, keep_archives, on_progress(item.url))
            elif isinstance(item, UrlList):
                _crawl(item, root, report, workers)
            elif isinstance(item, Manual):
                target = _resolve(root, item.storage)
                if target.exists() and any(target.iterdir()):
                    report.skipped.append(target)
                else:
                    manual_steps.append(item.steps.replace("{root}", str(root)))
    if manual_steps:
        steps = "\n".join(manual_steps)
        report.manual.extend(manual_steps)
        raise ManualDownloadRequired(
            f"{name}: media cannot be downloaded automatically; follow the steps in {entry.card} "
            f"(also printed by `lavislike download {name} --how`)",
            steps,
        )
    return report


def _fetch_file(res: Resource, root: Path, report: DownloadReport, progress) -> Path:
    dest = _resolve(root, res.storage)
    sums = Checksums(res.md5, res.sha256, res.size)
    if is_complete(dest, sums):
        report.skipped.append(dest)
    else:
        fetch(res.url, dest, sums, progress=progress)
        report.fetched.append(dest)
    return dest


def _fetch_resource(res: Resource, root: Path, report: DownloadReport, keep: bool, progress) -> None:
    if res.extract_to is None:
        _fetch_file(res, root, report, progress)
        return
    target = _resolve(root, res.extract_to)
    name = Path(res.storage).name
    if archive_mod.is_extracted(target, name):
        report.skipped.append(target)
        return
    path = _fetch_file(res, root, report, progress)
    archive_mod.extract(path, target, res.subdir)
    if not keep:
        path.unlink()
        sidecar_path(path).unlink(missing_ok=True)


def _crawl(item: UrlList, root: Path, report: DownloadReport, workers: int) -> None:
    index_path = _resolve(root, item.index_storage)
    fetch(item.index_url, index_path)
    try:
        rows = json.loads(index_path.read_text())[item.images_key]
        jobs = [(str(r[item.url_key]), _resolve(root, item.dest) / str(r[item.name_key])) for r in rows]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{index_path}: not the expected index format (missing {exc}); delete it and run again") from None
    todo = [(u, d) for u, d in jobs if not d.is_file()]
    report.skipped.extend(d for u, d in jobs if d.is_file())
    failures: list[tuple[str, str]] = []

    def one(job):
        url, dest = job
        try:
            fetch(url, dest, record=False, retries=2)
            return dest, None
        except DataError as exc:
            return None, (url, str(exc))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, failed in pool.map(one, todo):
            if done is not None:
                report.fetched.append(done)
            else:
                failures.append(failed)
    if failures:
        raise DataError(
            f"{len(failures)} of {len(jobs)} files listed in {index_path} failed (first: {failures[0][1]}); "
            f"run the same command again to retry only the missing ones"
        )
