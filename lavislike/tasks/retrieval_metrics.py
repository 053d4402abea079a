"""Recall@K for image-text retrieval from score matrices (LAVIS's ground-truth format).

``img2txt[i]`` lists the text ids that describe image ``i``; ``txt2img[t]`` is the image of
text ``t``. An image query's rank is the best rank of any of its texts; candidates are
ordered by descending score, ties broken by lower index first.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


def _as_list(mapping, n: int) -> list:
    if isinstance(mapping, Mapping):
        return [mapping[i] for i in range(n)]
    return list(mapping)


def _ranks(scores: np.ndarray, gt_mask: np.ndarray) -> np.ndarray:
    """Best (0-based) rank of a ground-truth candidate in every row."""
    order = np.argsort(-scores, axis=1, kind="stable")
    position = np.empty_like(order)
    rows = np.arange(scores.shape[0])[:, None]
    position[rows, order] = np.arange(scores.shape[1])[None, :]
    return np.where(gt_mask, position, scores.shape[1]).min(axis=1)


def retrieval_recall(scores_i2t: np.ndarray, scores_t2i: np.ndarray, img2txt, txt2img,
                     agg_metric: str = "txt_r_mean") -> dict[str, float]:
    """Recall@1/5/10 (percent) both ways, their means, and ``agg_metrics`` = ``agg_metric``
    (LAVIS: ``txt_r_mean``, the image-to-text mean).

    Args:
        scores_i2t: (N_images, N_texts) scores of texts for each image query.
        scores_t2i: (N_texts, N_images) scores of images for each text query.
        img2txt: image id -> list of text ids (dict or list).
        txt2img: text id -> image id (dict or list).
    """
    scores_i2t, scores_t2i = np.asarray(scores_i2t, dtype=np.float64), np.asarray(scores_t2i, dtype=np.float64)
    n_img, n_txt = scores_i2t.shape
    i2t_mask = np.zeros((n_img, n_txt), dtype=bool)
    for i, texts in enumerate(_as_list(img2txt, n_img)):
        i2t_mask[i, list(texts)] = True
    t2i_mask = np.zeros((n_txt, n_img), dtype=bool)
    t2i_mask[np.arange(n_txt), np.asarray(_as_list(txt2img, n_txt), dtype=np.int64)] = True
    r_i2t, r_t2i = _ranks(scores_i2t, i2t_mask), _ranks(scores_t2i, t2i_mask)
    out = {}
    for prefix, ranks in (("txt", r_i2t), ("img", r_t2i)):
        for k in (1, 5, 10):
            out[f"{prefix}_r{k}"] = 100.0 * float(np.mean(ranks < k))
        out[f"{prefix}_r_mean"] = (out[f"{prefix}_r1"] + out[f"{prefix}_r5"] + out[f"{prefix}_r10"]) / 3
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    out["agg_metrics"] = out[agg_metric]
    return out
