"""Bad samples: skip, count, report, stop at a limit - or fail at once in strict mode.

A sample whose media file is missing, truncated or corrupt, whose caption is empty after
processing, or whose annotation row lacks a field is *bad*. Datasets never hand a silent
``None`` to the collate function; instead:

* **default**: ``__getitem__`` returns a :class:`SkippedSample` marker (file + reason).
  :func:`lavislike.datasets.collate.collate` drops markers from the batch and lists them
  under ``batch["bad_samples"]``, so the record crosses DataLoader worker processes with
  the batch. The runner feeds every batch to :meth:`BadSampleTracker.consume`, which
  counts, raises :class:`~lavislike.errors.DataError` once ``max_bad_samples`` is passed,
  after ``max_bad_batches_in_row`` batches in a row without a usable sample (a wrong media
  folder makes every sample bad, and an epoch that never ends never reaches its check), or
  once ``max_bad_fraction`` is passed after at least ``min_seen_for_fraction`` samples; at
  :meth:`BadSampleTracker.end_epoch` it reports every file and reason (and checks
  ``max_bad_fraction``).
* **strict** (``strict: true`` in the dataset block): the first bad sample raises
  :class:`~lavislike.errors.DataError` naming the file.

Annotation rows with a missing field or an empty caption / question are found when the
dataset is built; they are kept in ``dataset.bad_rows`` (by annotation file and the
file's own row), reported once when the runner starts (:func:`rows_report`) and, for
training data, counted by :meth:`BadSampleTracker.add_dataset` in the first epoch.

Example:
    >>> tracker = BadSampleTracker(max_bad_samples=100)
    >>> for batch in loader:
    ...     if not tracker.consume(batch):
    ...         continue  # every sample of this batch was bad
    ...     loss = model(batch)["loss"]
    >>> print(tracker.end_epoch())
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from lavislike.errors import DataError

logger = logging.getLogger(__name__)

BAD_SAMPLES_KEY = "bad_samples"


class BadSampleError(DataError):
    """One unusable sample; datasets turn it into a :class:`SkippedSample` unless strict.

    Args:
        path: the file (or annotation file + row) at fault.
        reason: what is wrong with it, in a few words.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"bad sample {path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # DataLoader workers pickle exceptions back to the main process
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class SkippedSample:
    """What a dataset returns for a bad sample in non-strict mode (picklable).

    Attributes:
        path: the file at fault (a media file, or ``<annotation file> row <i>``).
        reason: what is wrong, in a few words.
        dataset: the dataset's name.
        index: the item index in the dataset (after bad rows were dropped); -1 for a row.
        row: the annotation file and its own row (``ann.json row 7``: the 0-based position
            in the file's list; ``line 8`` for ``.jsonl``) that named a bad media file.
    """

    path: str
    reason: str
    dataset: str = ""
    index: int = -1
    row: str = ""

    def describe(self) -> str:
        where = f"{self.dataset}: " if self.dataset else ""
        row = f" (from {self.row})" if self.row else ""
        return f"{where}{self.path}{row}: {self.reason}"


def strict_error(sample: SkippedSample) -> DataError:
    """The error strict mode raises for ``sample``."""
    return DataError(
        f"strict mode: bad sample {sample.describe()} "
        "(set strict: false in the dataset block to skip and count bad samples instead)"
    )


class BadSampleTracker:
    """Counts and reports skipped samples over an epoch; enforces the configured limits.

    Args:
        max_bad_samples: stop (DataError) when more than this many samples were skipped
            in the epoch; None for no absolute limit.
        max_bad_fraction: stop when skipped / seen exceeds this, at epoch end or as soon as
            ``min_seen_for_fraction`` samples were seen in the epoch; None for no limit.
        max_report: how many individual files the epoch report lists.
        max_bad_batches_in_row: stop after this many consecutive batches without a usable
            sample (the runner would otherwise draw replacements forever).
        min_seen_for_fraction: samples seen in the epoch before the fraction is checked
            mid-epoch (the first few batches say little about the whole corpus).
    """

    def __init__(
        self,
        max_bad_samples: int | None = None,
        max_bad_fraction: float | None = None,
        max_report: int = 20,
        max_bad_batches_in_row: int = 20,
        min_seen_for_fraction: int = 1000,
    ):
        self.max_bad_samples = max_bad_samples
        self.max_bad_fraction = max_bad_fraction
        self.max_report = max_report
        self.max_bad_batches_in_row = max_bad_batches_in_row
        self.min_seen_for_fraction = min_seen_for_fraction
        self.total_bad = 0
        self.bad_batches_in_row = 0
        self.reset()

    @classmethod
    def from_dataset_configs(cls, cfgs: Iterable) -> "BadSampleTracker":
        """The tightest limits among several dataset blocks (``max_bad_samples`` ...)."""
        counts = [c.get("max_bad_samples") for c in cfgs]
        fractions = [c.get("max_bad_fraction") for c in cfgs]
        counts = [c for c in counts if c is not None]
        fractions = [f for f in fractions if f is not None]
        return cls(min(counts) if counts else None, min(fractions) if fractions else None)

    def reset(self) -> None:
        """Start a new epoch (the total over all epochs is kept in ``total_bad``)."""
        self.seen = 0
        self.skipped: list[SkippedSample] = []

    # -- feeding ----------------------------------------------------------------------
    def add(self, samples: Iterable[SkippedSample]) -> None:
        """Count skipped samples; raise DataError once over ``max_bad_samples``."""
        new = list(samples)
        if not new:
            return
        self.skipped.extend(new)
        self.seen += len(new)
        self.total_bad += len(new)
        for s in new:
            logger.debug("skipped bad sample %s", s.describe())
        if self.max_bad_samples is not None and len(self.skipped) > self.max_bad_samples:
            raise DataError(
                f"{len(self.skipped)} bad samples this epoch, more than max_bad_samples="
                f"{self.max_bad_samples}; last: {new[-1].describe()} ({self.summary()}). "
                f"Fix or remove the files, or raise max_bad_samples in the dataset block."
            )

    def add_dataset(self, dataset) -> None:
        """Count the annotation rows a dataset dropped when it was built (``bad_rows``)."""
        rows = list(getattr(dataset, "bad_rows", []))
        self.add(rows)
        if rows:
            logger.warning(rows_report(dataset))

    def consume(self, batch: dict) -> bool:
        """Pop ``bad_samples`` from a collated batch and count it.

        Returns:
            False when the batch holds no usable sample (skip the step), else True.

        Raises:
            DataError: past ``max_bad_samples``, ``max_bad_batches_in_row`` or (after
                ``min_seen_for_fraction`` samples) ``max_bad_fraction``.
        """
        self.add(batch.pop(BAD_SAMPLES_KEY, []))
        n = batch_size(batch)
        self.seen += n
        self.bad_batches_in_row = 0 if n > 0 else self.bad_batches_in_row + 1
        if self.bad_batches_in_row >= self.max_bad_batches_in_row:
            raise DataError(f"{self.bad_batches_in_row} batches in a row held no usable sample "
                            f"({self.summary()}); is the media folder (build_info.images / videos) right?")
        fraction = self.fraction()  # not stats(): its per-reason count walks every skipped sample
        if (self.max_bad_fraction is not None and self.seen >= self.min_seen_for_fraction
                and fraction > self.max_bad_fraction):
            raise DataError(f"{fraction:.2%} of the first {self.seen} samples this epoch were bad, more than "
                            f"max_bad_fraction={self.max_bad_fraction} ({self.summary()})")
        return n > 0

    def summary(self, files: int = 3) -> str:
        """One line: bad count per dataset and reason, and the first ``files`` bad files."""
        counts = Counter((s.dataset or "?", s.reason) for s in self.skipped)
        parts = [f"{n} x {name}: {reason}" for (name, reason), n in counts.most_common(3)]
        first = "; ".join(s.describe() for s in self.skipped[:files])
        return f"{len(self.skipped)} bad of {self.seen}: {', '.join(parts)}; first: {first}"

    # -- reporting --------------------------------------------------------------------
    def fraction(self) -> float:
        """Skipped / seen this epoch."""
        return len(self.skipped) / self.seen if self.seen else 0.0

    def stats(self) -> dict:
        """``{"seen", "skipped", "fraction", "total_skipped", "reasons": {reason: n}}``."""
        return {
            "seen": self.seen,
            "skipped": len(self.skipped),
            "fraction": self.fraction(),
            "total_skipped": self.total_bad,
            "reasons": dict(Counter(s.reason for s in self.skipped)),
        }

    def report(self) -> str:
        """A multi-line summary: counts by reason and the first ``max_report`` files."""
        st = self.stats()
        if not st["skipped"]:
            return f"bad samples: none of {st['seen']}"
        lines = [f"bad samples: {st['skipped']} of {st['seen']} ({st['fraction']:.2%}) skipped"]
        lines += [f"  {n} x {reason}" for reason, n in sorted(st["reasons"].items())]
        lines += [f"  - {s.describe()}" for s in self.skipped[: self.max_report]]
        if st["skipped"] > self.max_report:
            lines.append(f"  ... and {st['skipped'] - self.max_report} more")
        return "\n".join(lines)

    def end_epoch(self) -> str:
        """Check ``max_bad_fraction``, return the report and start a new epoch."""
        text = self.report()
        st = self.stats()
        if self.max_bad_fraction is not None and st["fraction"] > self.max_bad_fraction:
            raise DataError(
                f"{st['fraction']:.2%} of samples were bad this epoch, more than "
                f"max_bad_fraction={self.max_bad_fraction} ({self.summary()})"
            )
        if st["skipped"]:
            logger.warning(text)
        self.reset()
        return text


def batch_size(batch: dict) -> int:
    """Number of samples in a collated batch (0 for a batch of only bad samples)."""
    for key, value in batch.items():
        if key == BAD_SAMPLES_KEY:
            continue
        if hasattr(value, "shape"):
            return int(value.shape[0])
        if isinstance(value, (list, tuple)):
            return len(value)
    return 0


def rows_report(dataset, max_report: int = 20) -> str:
    """The annotation rows ``dataset`` dropped when it was built, by file and row."""
    rows = list(getattr(dataset, "bad_rows", []))
    name = getattr(dataset, "name", type(dataset).__name__)
    if not rows:
        return f"{name}: no annotation rows dropped"
    lines = [f"{name}: {len(rows)} annotation rows dropped (kept {len(dataset)})"]
    lines += [f"  - {s.describe()}" for s in rows[:max_report]]
    if len(rows) > max_report:
        lines.append(f"  ... and {len(rows) - max_report} more")
    return "\n".join(lines)
