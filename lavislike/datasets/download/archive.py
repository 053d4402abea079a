"""Safe, idempotent extraction of downloaded zip / tar archives.

Members that would land outside the target folder (absolute paths, ``..``, links out)
are refused. A hidden marker ``.<archive>.extracted`` in the target folder records a
finished extraction, so a second call is free and an interrupted one is redone.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from lavislike.errors import DataError

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def marker_path(dest_dir: Path, archive_name: str) -> Path:
    return Path(dest_dir) / f".{archive_name}.extracted"


def is_extracted(dest_dir: str | os.PathLike, archive_name: str) -> bool:
    return marker_path(Path(dest_dir), archive_name).is_file()


def _target(member: str, subdir: str | None) -> PurePosixPath | None:
    """Where ``member`` goes relative to the target folder; None to skip it."""
    path = PurePosixPath(member.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"archive member '{member}' points outside the target folder; refusing to extract")
    if subdir:
        prefix = PurePosixPath(subdir.strip("/"))
        try:
            path = path.relative_to(prefix)
        except ValueError:
            return None
    return path if path.parts else None


def extract(archive: str | os.PathLike, dest_dir: str | os.PathLike, subdir: str | None = None) -> Path:
    """Extract ``archive`` into ``dest_dir`` (only members under ``subdir``, re-rooted).

    Args:
        archive: a .zip / .tar / .tar.gz / .tgz / .tar.bz2 / .tar.xz file.
        dest_dir: target folder, created when missing.
        subdir: keep only members below this folder of the archive and drop the
            prefix (``"YouTubeClips"`` puts ``YouTubeClips/a.avi`` at ``dest_dir/a.avi``).

    Returns:
        ``dest_dir`` as a Path.

    Raises:
        DataError: unknown format, a corrupt archive, or a member escaping ``dest_dir``.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    if is_extracted(dest_dir, archive.name):
        logger.info("already extracted, skipped: %s -> %s", archive, dest_dir)
        return dest_dir
    dest_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    rel = _target(info.filename, subdir)
                    if rel is None or info.is_dir():
                        continue
                    out = dest_dir / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    count += 1
        elif is_archive(archive.name):
            with tarfile.open(archive) as tf:
                for member in tf:
                    rel = _target(member.name, subdir)
                    if rel is None or member.isdir():
                        continue
                    if not member.isfile():  # links and devices: never needed by a corpus
                        logger.warning("skipping non-file archive member %s", member.name)
                        continue
                    out = dest_dir / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(member)
                    with src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    count += 1
        else:
            raise DataError(f"{archive}: unknown archive format; expected one of {', '.join(ARCHIVE_SUFFIXES)}")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DataError(f"{archive}: corrupt archive ({exc}); delete it and download again") from None
    if subdir and count == 0:
        raise DataError(f"{archive}: no member under '{subdir}/'; the archive layout changed upstream")
    marker_path(dest_dir, archive.name).write_text(json.dumps({"archive": str(archive), "files": count}))
    return dest_dir
