"""The BLIP-2 objectives as functions of features (no model state), the same on any
number of processes.

* :func:`itc_similarity` / :func:`itc_loss` - image-text contrastive: max over queries,
  in-batch negatives gathered from all ranks, label smoothing (or soft targets from image ids).
* :func:`hard_negative_indices` - ITM hard negatives drawn from softmax(sim), positives masked.
* :func:`itm_loss` - cross-entropy of the [pos, neg, neg] ITM batch.
* :func:`lm_loss` / :func:`token_cross_entropy` - next-token cross-entropy (ITG, LLMs).

Under DDP every mean is over the *global* batch (rows or tokens of all ranks): a rank
returns ``W x (its sum) / (global count)``, so DDP's average of the ranks' gradients is the
gradient of the global mean and W ranks of batch b train like one process of batch W x b
(also when a rank's batch lost unreadable samples). The mean over ranks of the returned
values is the global batch's loss, which the runner logs.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from lavislike.common.dist import (
    all_gather_nograd,
    all_gather_with_grad,
    all_reduce_sum,
    broadcast_rng_state,
    gather_sizes,
    get_rank,
    get_world_size,
)

NEG_INF = -10000.0  # the reference's mask value: exp() of it is exactly 0 in fp32


def _mean(loss_sum: torch.Tensor, count, total: Optional[int] = None) -> torch.Tensor:
    """``W x loss_sum / (count summed over ranks)`` (see the module docstring); ``total``:
    that sum when the caller knows it from the batch sizes (no collective then)."""
    if total is None:
        total = all_reduce_sum(torch.as_tensor(count, dtype=torch.float64, device=loss_sum.device))
    else:
        total = torch.tensor(float(total), dtype=torch.float64, device=loss_sum.device)
    return loss_sum * (get_world_size() / total.clamp(min=1)).to(loss_sum.dtype)


def _row_mean(values: torch.Tensor, total: Optional[int] = None) -> torch.Tensor:
    """The mean of per-row ``values`` over the global batch (``total`` rows, when known)."""
    return values.mean() if get_world_size() == 1 else _mean(values.sum(), values.numel(), total)


def token_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    layout: Optional[torch.Tensor] = None,
    total: Optional[int] = None,
) -> torch.Tensor:
    """Cross-entropy of ``logits`` (N, V) against ``targets`` (N,) (-100 ignored), averaged
    over the non-ignored targets of the global batch.

    In one process this is exactly ``F.cross_entropy(..., ignore_index=-100)`` (the loss
    ``transformers`` computes), in ``logits``' dtype (callers upcast where their reference
    does).

    Args:
        layout: when the N rows were selected from a larger set of positions (the labelled
            ones), the boolean mask of that selection. The sum then runs over the full set
            (unselected rows ignored), so the loss is bit for bit the one computed on every
            position: the reduction's rounding follows the row index. Without smoothing only.
        total: the non-ignored targets of all ranks, when the caller knows it (it is then
            not summed over ranks).
    """
    reduction = "mean" if get_world_size() == 1 else "sum"
    if layout is not None and not label_smoothing:
        keep = layout.flatten()
        picked = torch.log_softmax(logits, -1).gather(1, targets[:, None])
        logp = picked.new_zeros(keep.numel(), 1).masked_scatter(keep[:, None], picked)
        full_targets = torch.where(keep, 0, -100)
        loss = F.nll_loss(logp, full_targets, ignore_index=-100, reduction=reduction)
    else:
        loss = F.cross_entropy(logits, targets, ignore_index=-100, label_smoothing=label_smoothing,
                               reduction=reduction)
    return loss if reduction == "mean" else _mean(loss, (targets != -100).sum(), total)


def itc_similarity(
    image_feats: torch.Tensor, text_feats: torch.Tensor, max_elements: int = 1 << 26
) -> torch.Tensor:
    """Image-text similarity: max over queries of query . text.

    Args:
        image_feats: (N, Q, D) normalised query features.
        text_feats: (M, D) normalised text features.
        max_elements: the (n, Q, M) query-text products are formed for as many images at a
            time as keep them under this size (a 5k x 25k x 32 retrieval matrix would take
            16 GB at once).

    Returns:
        (N, M) similarities.
    """
    n, q = image_feats.shape[:2]
    text_t = text_feats.t()
    step = max(1, max_elements // max(q * text_feats.shape[0], 1))
    if step >= n:
        return (image_feats @ text_t).amax(1)
    return torch.cat([(image_feats[s : s + step] @ text_t).amax(1) for s in range(0, n, step)])


def itc_loss(
    image_feats: torch.Tensor,
    text_feat: torch.Tensor,
    temp: torch.Tensor,
    image_ids: Optional[torch.Tensor] = None,
    label_smoothing: float = 0.1,
    gather_grad: bool = False,
    sizes: Optional[list[int]] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric contrastive loss against the features of the whole (gathered) batch.

    Args:
        image_feats: (B, Q, D) this rank's normalised query features.
        text_feat: (B, D) this rank's normalised text features.
        temp: scalar temperature.
        image_ids: (B,) ids; when given, every caption of the same image is a positive
            (targets 0.9 x uniform over positives + 0.1 x uniform).
        label_smoothing: smoothing of the one-hot targets when ``image_ids`` is None.
        gather_grad: False (LAVIS): the batch's features enter as constants (gathered
            without gradient, in one process too), so image-to-text similarities train the
            image side only and text-to-image the text side only. True: both sides of
            every similarity get gradient (the full gradient of the loss).
        sizes: every rank's batch size (:func:`~lavislike.common.dist.gather_sizes`).

    Returns:
        ``(loss, sim_i2t, sim_t2i)``; the similarities are (B, global batch) and divided by
        ``temp``.
    """
    bs = image_feats.shape[0]
    sizes = sizes or gather_sizes(bs, image_feats.device)
    gather = all_gather_with_grad if gather_grad else all_gather_nograd
    image_all, text_all = gather(image_feats, sizes), gather(text_feat, sizes)
    sim_i2t = itc_similarity(image_feats, text_all) / temp
    sim_t2i = itc_similarity(image_all, text_feat).t() / temp
    if image_ids is not None:
        pos = positives_mask(image_ids, sizes=sizes)
        targets = pos.float() / pos.sum(1, keepdim=True)
        targets = 0.9 * targets + 0.1 / targets.shape[1]
        loss_i2t = _row_mean(-(F.log_softmax(sim_i2t, 1) * targets).sum(1), sum(sizes))
        loss_t2i = _row_mean(-(F.log_softmax(sim_t2i, 1) * targets).sum(1), sum(sizes))
    else:
        targets = torch.arange(bs, device=sim_i2t.device) + sum(sizes[: get_rank()])
        loss_i2t = token_cross_entropy(sim_i2t, targets, label_smoothing, total=sum(sizes))
        loss_t2i = token_cross_entropy(sim_t2i, targets, label_smoothing, total=sum(sizes))
    return (loss_i2t + loss_t2i) / 2, sim_i2t, sim_t2i


def positives_mask(image_ids: Optional[torch.Tensor], sizes: list[int], all_rows: bool = False,
                   device: Optional[torch.device] = None) -> torch.Tensor:
    """True where sample b and global sample j are a positive pair: (B, global batch), or
    (global batch, global batch) with ``all_rows``.

    Without ``image_ids`` the positives are the pairs of a sample with itself (built on
    ``device``; with ids, the mask is on theirs).
    """
    if image_ids is None:
        total = sum(sizes)
        eye = torch.eye(total, dtype=torch.bool, device=device)
        if all_rows:
            return eye
        start = sum(sizes[: get_rank()])
        return eye[start : start + sizes[get_rank()]]
    ids = image_ids.view(-1, 1)
    ids_all = all_gather_nograd(ids, sizes)
    return (ids_all if all_rows else ids) == ids_all.t()


def _draw(weights: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One index per row of ``weights``, as LAVIS draws them: ``torch.multinomial(row, 1)``
    row after row from one generator."""
    if weights.device.type == "cpu":
        # on CPU one call over the rows consumes the generator exactly as the row-by-row
        # calls do (tests/models/test_itc_itm_reference.py checks it); CUDA's does not
        return torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return torch.cat([torch.multinomial(row, 1, generator=generator) for row in weights])


@torch.no_grad()
def hard_negative_indices(
    sim_i2t: torch.Tensor,
    sim_t2i: torch.Tensor,
    image_ids: Optional[torch.Tensor] = None,
    sizes: Optional[list[int]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one hard negative per sample from softmax(sim) with the positives masked.

    The negatives of the *global* batch are drawn in LAVIS's order - a negative image for
    every text, then a negative text for every image - from torch's global generator as it
    stands on rank 0 (its state is sent to the other ranks, which draw the same indices
    without touching their own generators); each rank keeps its slice. In one process this
    is exactly LAVIS's draw, and W ranks draw what one process with their concatenated
    batch draws.

    Args:
        sim_i2t: (B, global batch) image -> all texts (temperature-scaled).
        sim_t2i: (B, global batch) text -> all images.
        image_ids: (B,) ids; same-image pairs are positives and never drawn.
        sizes: every rank's batch size (:func:`~lavislike.common.dist.gather_sizes`).

    Returns:
        ``(neg_text, neg_image)``, each (B,) indices into the gathered batch: the negative
        text for each local image and the negative image for each local text.
    """
    bs = sim_i2t.shape[0]
    sizes = sizes or gather_sizes(bs, sim_i2t.device)
    pos = positives_mask(image_ids, sizes, all_rows=True, device=sim_i2t.device).to(sim_i2t.device)
    weights_t2i = F.softmax(all_gather_nograd(sim_t2i, sizes).float().masked_fill(pos, NEG_INF), 1)
    weights_i2t = F.softmax(all_gather_nograd(sim_i2t, sizes).float().masked_fill(pos, NEG_INF), 1)
    generator = None  # torch's global generator (rank 0, and one process)
    if get_world_size() > 1:
        state = broadcast_rng_state(sim_i2t.device)
        if get_rank() != 0:
            generator = torch.Generator(device=sim_i2t.device)
            generator.set_state(state)
    neg_image = _draw(weights_t2i, generator)
    neg_text = _draw(weights_i2t, generator)
    start = sum(sizes[: get_rank()])
    return neg_text[start : start + bs], neg_image[start : start + bs]


def itm_loss(logits: torch.Tensor, batch_size: int, sizes: Optional[list[int]] = None) -> torch.Tensor:
    """Cross-entropy of ITM logits (3B, 2) ordered [pos B, neg B, neg B] (global mean;
    ``sizes``: every rank's B, when known)."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[:batch_size] = 1
    return token_cross_entropy(logits, labels, total=3 * sum(sizes) if sizes else None)


def lm_loss(hidden: torch.Tensor, labels: torch.Tensor, head, label_smoothing: float = 0.1) -> torch.Tensor:
    """Next-token cross-entropy: ``head(hidden[:, t])`` predicts ``labels[:, t + 1]``; -100
    ignored. The head (a vocabulary-wide projection) runs on the labelled positions only.

    Averaged over the predicted tokens of the global batch.
    """
    targets = labels[:, 1:]
    keep = targets != -100
    return token_cross_entropy(head(hidden[:, :-1][keep]).float(), targets[keep], label_smoothing)
