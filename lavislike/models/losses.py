"""The three stage-1 BLIP-2 objectives as functions of features (no model state).

* :func:`itc_similarity` / :func:`itc_loss` - image-text contrastive: max over queries,
  in-batch negatives gathered from all ranks, label smoothing (or soft targets from image ids).
* :func:`hard_negative_indices` - ITM hard negatives drawn from softmax(sim), positives masked.
* :func:`itm_loss` - binary cross-entropy of the [pos, neg, neg] ITM batch.
* :func:`lm_loss` - next-token cross-entropy with label smoothing (ITG).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from lavislike.common.dist import all_gather_nograd, all_gather_with_grad, get_rank

NEG_INF = -10000.0  # the reference's mask value: exp() of it is exactly 0 in fp32


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric contrastive loss against the features of the whole (gathered) batch.

    Args:
        image_feats: (B, Q, D) this rank's normalised query features.
        text_feat: (B, D) this rank's normalised text features.
        temp: scalar temperature.
        image_ids: (B,) ids; when given, every caption of the same image is a positive
            (targets 0.9 x uniform over positives + 0.1 x uniform).
        label_smoothing: smoothing of the one-hot targets when ``image_ids`` is None.

    Returns:
        ``(loss, sim_i2t, sim_t2i)``; the similarities are (B, B x world) and divided by
        ``temp``.
    """
    image_all = all_gather_with_grad(image_feats)
    text_all = all_gather_with_grad(text_feat)
    sim_i2t = itc_similarity(image_feats, text_all) / temp
    sim_t2i = itc_similarity(image_all, text_feat).t() / temp
    bs = image_feats.shape[0]
    if image_ids is not None:
        pos = positives_mask(image_ids)
        targets = pos.float() / pos.sum(1, keepdim=True)
        targets = 0.9 * targets + 0.1 / targets.shape[1]
        loss_i2t = -(F.log_softmax(sim_i2t, 1) * targets).sum(1).mean()
        loss_t2i = -(F.log_softmax(sim_t2i, 1) * targets).sum(1).mean()
    else:
        targets = torch.arange(bs, device=sim_i2t.device) + get_rank() * bs
        loss_i2t = F.cross_entropy(sim_i2t, targets, label_smoothing=label_smoothing)
        loss_t2i = F.cross_entropy(sim_t2i, targets, label_smoothing=label_smoothing)
    return (loss_i2t + loss_t2i) / 2, sim_i2t, sim_t2i


def positives_mask(
    image_ids: Optional[torch.Tensor], bs: int = 0, world_bs: int = 0, device=None
) -> torch.Tensor:
    """(B, B x world) True where local sample b and global sample j are a positive pair.

    Without ``image_ids`` the positives are the diagonal of this rank's block.
    """
    if image_ids is None:
        mask = torch.zeros(bs, world_bs, dtype=torch.bool, device=device)
        cols = torch.arange(bs, device=device) + get_rank() * bs
        mask[torch.arange(bs, device=device), cols] = True
        return mask
    ids = image_ids.view(-1, 1)
    return ids == all_gather_nograd(ids).t()


@torch.no_grad()
def hard_negative_indices(
    sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, image_ids: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one hard negative per sample from softmax(sim) with the positives masked.

    Args:
        sim_i2t: (B, B x world) image -> all texts (temperature-scaled).
        sim_t2i: (B, B x world) text -> all images.
        image_ids: (B,) ids; same-image pairs are positives and never drawn.

    Returns:
        ``(neg_text_idx, neg_image_idx)``, each (B,) indices into the gathered batch: the
        negative text for each image and the negative image for each text.
    """
    pos = positives_mask(image_ids, sim_i2t.shape[0], sim_i2t.shape[1], sim_i2t.device)
    weights_i2t = F.softmax(sim_i2t.float().masked_fill(pos, NEG_INF), 1)
    weights_t2i = F.softmax(sim_t2i.float().masked_fill(pos, NEG_INF), 1)
    neg_text = torch.multinomial(weights_i2t, 1).squeeze(1)
    neg_image = torch.multinomial(weights_t2i, 1).squeeze(1)
    return neg_text, neg_image


def itm_loss(logits: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cross-entropy of ITM logits (3B, 2) ordered [pos B, neg B, neg B]."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[:batch_size] = 1
    return F.cross_entropy(logits, labels)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
    """Next-token cross-entropy: ``logits[:, t]`` predicts ``labels[:, t + 1]``; -100 ignored.

    Averaged over the predicted (non-ignored) tokens of the batch.
    """
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1])
    targets = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shifted.float(), targets, ignore_index=-100, label_smoothing=label_smoothing)
