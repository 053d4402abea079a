"""Resumable, verified HTTP downloads of single files: the one client for every URL
(data archives in :mod:`lavislike.datasets.download`, weights in
:mod:`lavislike.models.image_encoders.weights`; hub ids go through ``huggingface_hub``).

A download writes into ``<dest>.part`` and resumes it with an HTTP ``Range`` request
after an interruption; the file appears under its real name only after its length
(``Content-Length`` / ``Content-Range``) and checksums (md5 / sha256 when known) match,
so an existing file is always complete. A hidden sidecar ``.<name>.download.json``
records url, size and sha256 so a second call can skip the file without re-hashing it,
and a file whose size no longer matches that record is fetched again.

Only the standard library is used: no dependency is imported at module import time.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lavislike.common.io import write_json_atomic
from lavislike.errors import DataError, LavislikeError

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "lavislike-download/1.0 (+https://github.com/lavislike)"


@dataclass(frozen=True)
class Checksums:
    """Expected digests (lower-case hex) and size of a file; any may be unknown."""

    md5: str | None = None
    sha256: str | None = None
    size: int | None = None

    def known(self) -> bool:
        return bool(self.md5 or self.sha256)


def sidecar_path(dest: Path) -> Path:
    """The hidden record written beside ``dest`` after a verified download."""
    return dest.with_name(f".{dest.name}.download.json")


def _hash_file(path: Path, algos: tuple[str, ...] = ("md5", "sha256")) -> dict[str, str]:
    hashers = {a: hashlib.new(a) for a in algos}
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            for h in hashers.values():
                h.update(block)
    return {a: h.hexdigest() for a, h in hashers.items()}


def _mismatch(expected: Checksums, got: dict[str, str], size: int) -> str | None:
    """A one-line description of the first mismatch, or None when everything matches."""
    if expected.size is not None and size != expected.size:
        return f"size {size} bytes, expected {expected.size}"
    for algo in ("sha256", "md5"):
        want = getattr(expected, algo)
        if want and got.get(algo) and got[algo].lower() != want.lower():
            return f"{algo} {got[algo]}, expected {want}"
    return None


def is_complete(dest: Path, expected: Checksums = Checksums()) -> bool:
    """True when ``dest`` exists and matches ``expected`` and its download record.

    Hashing is skipped when the sidecar recorded the same size and mtime with
    matching digests (re-hashing a 13 GB archive on every call would defeat the point).
    """
    if not dest.is_file():
        return False
    stat = dest.stat()
    record: dict = {}
    side = sidecar_path(dest)
    if side.is_file():
        try:
            record = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError):
            record = {}
    if record.get("size") is not None and record["size"] != stat.st_size:
        return False
    if not expected.known():
        return expected.size is None or stat.st_size == expected.size
    if record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns:
        if _mismatch(expected, record, stat.st_size) is None and any(
            record.get(a) for a in ("md5", "sha256") if getattr(expected, a)
        ):
            return True
    got = _hash_file(dest)
    if _mismatch(expected, got, stat.st_size) is not None:
        return False
    _write_record(dest, record.get("url"), got)
    return True


def _write_record(dest: Path, url: str | None, digests: dict[str, str]) -> None:
    stat = dest.stat()
    write_json_atomic(sidecar_path(dest), {"url": url, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, **digests})


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _total_length(resp, offset: int) -> int | None:
    """Full file length from ``Content-Range`` (206) or ``Content-Length`` (200)."""
    content_range = resp.headers.get("Content-Range")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length")
    if length is None or not length.isdigit():
        return None
    return int(length) + (offset if resp.status == 206 else 0)


def fetch(
    url: str,
    dest: str | os.PathLike,
    checksums: Checksums = Checksums(),
    *,
    timeout: float = 60.0,
    retries: int = 3,
    record: bool = True,
    backoff: float = 2.0,
    progress: Callable[[int, int | None], None] | None = None,
    error: type[LavislikeError] = DataError,
) -> Path:
    """Download ``url`` to ``dest`` unless a complete, verified copy is already there.

    Args:
        url: http(s) or file URL.
        dest: final path of the file.
        checksums: expected md5 / sha256 / size; a mismatch raises :class:`DataError`
            and deletes the partial file (it cannot be resumed into a good one).
        timeout: seconds per network operation.
        retries: reconnect attempts after a dropped connection; each resumes the
            ``.part`` file where it stopped.
        record: write the hidden sidecar record (off for per-image crawls of
            thousands of small files, where the final rename is proof enough).
        backoff: base of the exponential wait (seconds) between retries.
        progress: called with (bytes so far, total bytes or None).
        error: the error class raised (``CheckpointError`` for weights).

    Returns:
        ``dest`` as a Path.

    Raises:
        DataError: (or ``error``) the server refuses, the host name does not resolve (no
            retries then: offline, or a wrong host), the transfer stays incomplete after
            ``retries`` attempts, or a checksum / size does not match.
    """
    dest = Path(dest)
    if is_complete(dest, checksums):
        logger.info("present and verified, skipped: %s", dest)
        return dest
    if dest.exists():
        logger.warning("%s does not match its checksum or download record; fetching again", dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            total = _download_into(url, part, timeout, progress)
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code not in (408, 429, 500, 502, 503, 504):
                raise error(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
            if _host_unknown(exc):  # no retry can help: offline, or a wrong host name
                raise error(
                    f"download of {url} failed: its host name does not resolve ({exc.reason.strerror}); "
                    f"without a network, fetch the file elsewhere and put it at {dest}"
                ) from None
            attempt += 1
            if attempt > retries:
                raise error(
                    f"download of {url} failed after {retries} retries: {exc}; run the same "
                    f"command again to resume from {part}, or put the whole file at {dest}"
                ) from None
            logger.warning("download of %s interrupted (%s); resuming (%d/%d)", url, exc, attempt, retries)
            time.sleep(min(backoff**attempt, 60.0) if backoff else 0.0)
    size = part.stat().st_size
    expected = checksums
    if total is not None and checksums.size is None:
        expected = Checksums(checksums.md5, checksums.sha256, total)
    digests = _hash_file(part)
    problem = _mismatch(expected, digests, size)
    if problem:
        part.unlink()
        raise error(f"download of {url} to {dest} is corrupt: {problem}; the partial file was deleted, run again")
    os.replace(part, dest)
    if record:
        _write_record(dest, url, digests)
    return dest


def _host_unknown(exc: BaseException) -> bool:
    """Whether the resolver said the host does not exist (not "try again later")."""
    reason = getattr(exc, "reason", None)
    unknown = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
    return isinstance(reason, socket.gaierror) and reason.errno in unknown


def _download_into(url: str, part: Path, timeout: float, progress) -> int | None:
    """Append the rest of ``url`` to ``part``; returns the full length when known."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to fetch: the .part is whole
            return None
        raise
    with resp:
        if offset and resp.status != 206:  # server ignored Range: start over
            offset = 0
        total = _total_length(resp, offset)
        if total is not None and offset == total:
            return total
        with open(part, "ab" if offset else "wb") as fh:
            done = offset
            for block in iter(lambda: resp.read(CHUNK), b""):
                fh.write(block)
                done += len(block)
                if progress is not None:
                    progress(done, total)
    if total is not None and done < total:
        raise ConnectionError(f"connection closed at {done} of {total} bytes")
    return total
