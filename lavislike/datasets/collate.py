"""THE batch contract: how samples become the ``samples`` dict a model's ``forward`` gets.

A dataset item is a flat dict (or a :class:`~lavislike.datasets.bad_data.SkippedSample`
for a bad sample). :func:`collate` turns a list of items into one dict:

========================  ======================  =======================================
key                       type in the batch       meaning
========================  ======================  =======================================
``image``                 FloatTensor (B,3,H,W)   processed images
``video``                 FloatTensor (B,T,3,H,W) processed frames
``image_features``        Tensor (B,P,C)          the frozen image encoder's output
                                                  (before ``ln_vision``) read from a
                                                  feature cache, instead of ``image``
``image_id``              LongTensor (B,)         integer image id (train: dense id per
                                                  distinct image, so ITC can treat
                                                  captions of the same image as
                                                  positives; eval: the corpus id)
``index``                 LongTensor (B,)         position in the dataset (retrieval
                                                  eval: row of the image in the
                                                  similarity matrix)
``n_answers``             LongTensor (B,)         ``len(answers[i])``, added by collate
                                                  whenever ``answers`` is present
``text_input``            list[str]               caption / question (after processor)
``text_output``           list[str]               target text (prefix-LM rest, best answer)
``prompt``                list[str]               per-sample prompt
``instance_id``           list[str]               unique id of the annotation row
``question_id``           list                    corpus question id (int or str)
``answers``               list[list[str]]         distinct answers
``weights``               list[list[float]]       answer weights (sum to 1 per question)
``bad_samples``           list[SkippedSample]     only when some items were bad: they
                                                  are dropped from every other key
========================  ======================  =======================================

Any other key stays a list, in sample order. ``image_id`` values that are not integers
(a corpus with string ids) stay a list of str. A batch where every item was bad holds only
``bad_samples``; :meth:`BadSampleTracker.consume` returns False for it.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from lavislike.datasets.bad_data import BAD_SAMPLES_KEY, SkippedSample
from lavislike.errors import DataError

STACK_KEYS = ("image", "video", "image_features")
LONG_KEYS = ("image_id", "index", "n_answers")


def _as_long(values: list) -> torch.Tensor | list:
    if all(isinstance(v, int) or (isinstance(v, torch.Tensor) and v.ndim == 0) for v in values):
        return torch.tensor([int(v) for v in values], dtype=torch.long)
    return list(values)


def collate(items: Sequence[Any]) -> dict:
    """Collate dataset items into a batch following the table in this module's docstring.

    Raises:
        DataError: when items disagree on their keys (two kinds of datasets in one batch).
    """
    bad = [it for it in items if isinstance(it, SkippedSample)]
    good = [it for it in items if not isinstance(it, SkippedSample)]
    batch: dict[str, Any] = {}
    if good:
        keys = list(good[0].keys())
        for it in good[1:]:
            if it.keys() != good[0].keys():
                raise DataError(
                    f"samples in one batch have different keys: {sorted(good[0])} vs {sorted(it)}; "
                    "mix datasets of different kinds with MultiDatasetLoader, not in one batch"
                )
        for key in keys:
            values = [it[key] for it in good]
            if key in STACK_KEYS:
                batch[key] = torch.stack(values)
            elif key in LONG_KEYS:
                batch[key] = _as_long(values)
            else:
                batch[key] = values
        if "answers" in batch and "n_answers" not in batch:
            batch["n_answers"] = torch.tensor([len(a) for a in batch["answers"]], dtype=torch.long)
    if bad:
        batch[BAD_SAMPLES_KEY] = bad
    return batch
