"""``lavislike download``: the command-line face of :func:`download`."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from lavislike.datasets.download.core import WHAT, ManualDownloadRequired, available, download
from lavislike.datasets.download.sources import corpus
from lavislike.errors import LavislikeError


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the ``download`` arguments to ``parser`` (a new one when None)."""
    parser = parser or argparse.ArgumentParser(
        prog="lavislike download", description="Fetch a corpus's annotations and images into the cache."
    )
    parser.add_argument("names", nargs="*", metavar="dataset", help="corpus names (see --list)")
    parser.add_argument("--root", default=None, help="download root (default: $LAVISLIKE_CACHE or ~/.cache/lavislike)")
    parser.add_argument("--splits", nargs="+", default=None, choices=("train", "val", "test"))
    parser.add_argument("--what", nargs="+", default=["annotations", "images"], choices=WHAT)
    parser.add_argument("--keep-archives", action="store_true", help="keep zip/tar files after extraction")
    parser.add_argument("--workers", type=int, default=16, help="parallel connections for per-image crawls")
    parser.add_argument("--list", action="store_true", help="list the corpora and how each is obtained")
    parser.add_argument("--how", action="store_true", help="print the manual steps of a corpus and exit")
    return parser


class _Progress:
    """One status line per file, refreshed at most twice a second."""

    def __init__(self, stream):
        self.stream, self.last = stream, 0.0

    def __call__(self, url: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self.last < 0.5 and (total is None or done < total):
            return
        self.last = now
        size = f"{done / 2**20:.1f}/{total / 2**20:.1f} MiB" if total else f"{done / 2**20:.1f} MiB"
        self.stream.write(f"\r{url.rsplit('/', 1)[-1]}: {size}   ")
        if total is not None and done >= total:
            self.stream.write("\n")
        self.stream.flush()


def download_main(argv: Sequence[str] | None = None) -> int:
    """Run ``lavislike download``; returns the exit status (0 ok, 2 user-fixable problem)."""
    args = build_parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    if args.list or not args.names:
        out.write(f"{'dataset':26s}{'annotations':14s}{'media':11s}card\n")
        for name, info in available().items():
            out.write(f"{name:26s}{info['annotations']:14s}{info['media']:11s}{info['card']}\n")
        return 0
    status = 0
    for name in args.names:
        try:
            if args.how:
                steps = [m.steps for m in corpus(name).media if hasattr(m, "steps")]
                out.write(("\n".join(steps) if steps else f"{name}: everything is downloaded automatically") + "\n")
                continue
            report = download(
                name, args.root, args.splits, args.what, keep_archives=args.keep_archives,
                workers=args.workers, progress=_Progress(err),
            )
            out.write(f"{name}: {len(report.fetched)} fetched, {len(report.skipped)} already present\n")
        except ManualDownloadRequired as exc:
            err.write(f"{exc}\n{exc.steps}\n")
            status = 2
        except LavislikeError as exc:
            err.write(f"error: {exc}\n")
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(download_main())
