"""``retrieval``: ITC similarity for all pairs, the top-k candidates re-ranked with ITM.

What LAVIS's BLIP-2 ``compute_sim_matrix`` computes, organised differently:

* each rank embeds its shard of the images; only the small ITC features (N x Q x D) are
  gathered, the image encoder's output stays on the rank that computed it;
* every rank forms the ITC similarity of all pairs and each image's and each text's top
  ``k_test`` candidates; the union of the two sets is scored by ITM **once per pair**,
  grouped by image (each image's cross-attention keys/values projected once per batch of
  ``itm_batch_size`` pairs), on the rank that holds the image; only the scores are gathered.

Fusion: ``itm+itc`` (LAVIS, the ``retrieval`` task's default: the positive-class ITM logit,
mean over queries, plus the ITC similarity) or ``itm`` (the ITM score alone, as the paper
describes its re-ranking). Candidates outside the top-k score -100. The metric that picks
the best checkpoint (``agg_metrics``) is ``run.agg_metric``: LAVIS's ``txt_r_mean`` by
default, or ``img_r_mean`` / ``r_mean``.
"""

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any


import torch

from lavislike.common import dist as D
from lavislike.common.suggest import did_you_mean
from lavislike.common.io import write_json_atomic
from lavislike.errors import ConfigError, DataError
from lavislike.registry import TASKS
from lavislike.tasks.base_task import BaseTask, model_device
from lavislike.tasks.retrieval_metrics import retrieval_recall

logger = logging.getLogger("lavislike")

FUSIONS = ("itm", "itm+itc")
AGG_METRICS = ("txt_r_mean", "img_r_mean", "r_mean")
RETRIEVAL_METHODS = ("retrieval_image_embeds", "retrieval_text_embeds", "itm_scores", "itc_similarity")


@dataclass
class RetrievalEvalConfig:
    """Run keys of zero-shot retrieval scoring (``retrieval``, and the stage-1 validation
    of ``image_text_pretrain``)."""

    k_test: int = 128  # ITC candidates re-ranked by ITM per query
    itm_batch_size: int = 128  # (image, text) pairs per ITM forward
    text_batch_size: int = 256
    fusion: str = "itm"  # itm (ITM alone) | itm+itc (LAVIS)


@dataclass
class RetrievalTaskConfig(RetrievalEvalConfig):
    """Run keys read by ``retrieval`` (LAVIS's defaults)."""

    task: str = "retrieval"
    fusion: str = "itm+itc"  # LAVIS compute_sim_matrix: ITM logit + ITC similarity
    agg_metric: str = "txt_r_mean"  # LAVIS's agg_metrics; img_r_mean | r_mean


def check_fusion(fusion: str) -> None:
    if fusion not in FUSIONS:
        raise ConfigError(f"run.fusion: unknown '{fusion}'; valid: {', '.join(FUSIONS)}"
                          f"{did_you_mean(fusion, FUSIONS)}")


def supports_retrieval(model: Any) -> bool:
    return all(hasattr(model, m) for m in RETRIEVAL_METHODS)


def _shard(n: int) -> range:
    return range(D.get_rank(), n, D.get_world_size())


@dataclass
class ImageEmbeddings:
    """The images' ITC features on every rank; their ITM inputs only where they were computed.

    ``embeds`` (the image encoder's output, e.g. 677 x 1408 per image at ViT-g / 364 px) never
    leaves the rank that computed it: ITM pairs of an image are scored on its ``owner`` rank.
    """

    feat: torch.Tensor  # (N, Q, D) every image, index order
    embeds: torch.Tensor | None  # (n_local, P, C) this rank's images
    local_row: torch.Tensor  # (N,) row of each image in ``embeds``, -1 where not held here
    owner: torch.Tensor  # (N,) the rank that scores each image's ITM pairs


@torch.no_grad()
def embed_images(model, data_loader) -> ImageEmbeddings:
    """Embed this rank's shard of the loader; gather only the small ITC features."""
    device = model_device(model)
    feats, embeds, index = [], [], []
    for batch in data_loader:
        if batch.pop("bad_samples", None):
            raise DataError("retrieval evaluation needs every image; unreadable images found")
        key = "image" if "image" in batch else "video"
        out = model.retrieval_image_embeds(batch[key].to(device))
        feats.append(out["feat"].cpu())
        embeds.append(out["embeds"])
        index.append((batch["index"] if "index" in batch else batch["image_id"]).cpu().long())
    local_index = torch.cat(index) if index else torch.empty(0, dtype=torch.long)
    parts = D.all_gather_object((local_index, torch.cat(feats) if feats else None))
    all_index = torch.cat([ix for ix, _ in parts])
    n = int(all_index.max()) + 1 if all_index.numel() else 0
    feat = None
    holders: list[list[int]] = [[] for _ in range(n)]
    for rank, (ix, f) in enumerate(parts):
        if f is None:
            continue
        if feat is None:
            feat = f.new_zeros((n, *f.shape[1:]))
        feat[ix] = f
        for i in ix.tolist():
            holders[i].append(rank)
    missing = [i for i, h in enumerate(holders) if not h]
    if feat is None or missing:
        raise DataError(f"retrieval evaluation: images {missing[:5]} of {n} were not embedded "
                        "(the loader must cover every image index)")
    # an image held by several ranks (an unsharded loader) is scored by one of them, spread
    owner = torch.tensor([h[i % len(h)] for i, h in enumerate(holders)], dtype=torch.long)
    local_row = torch.full((n,), -1, dtype=torch.long)
    local_row[local_index] = torch.arange(local_index.numel())
    return ImageEmbeddings(feat, torch.cat(embeds) if embeds else None, local_row, owner)


@torch.no_grad()
def embed_texts(model, texts: list[str], batch_size: int) -> dict[str, torch.Tensor]:
    """Text features / token ids of all texts (batches sharded across ranks)."""
    starts = list(range(0, len(texts), batch_size))
    local = []
    for b in _shard(len(starts)):
        out = model.retrieval_text_embeds(texts[starts[b] : starts[b] + batch_size])
        local.append((b, {k: out[k].cpu() for k in ("feat", "input_ids", "attention_mask")}))
    parts = sorted((p for ps in D.all_gather_object(local) for p in ps), key=lambda x: x[0])
    width = max(p["input_ids"].shape[1] for _, p in parts)

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]))

    return {"feat": torch.cat([p["feat"] for _, p in parts]),
            "input_ids": torch.cat([pad(p["input_ids"]) for _, p in parts]),
            "attention_mask": torch.cat([pad(p["attention_mask"]) for _, p in parts])}


def _itm_takes(model, argument: str) -> bool:
    try:
        return argument in inspect.signature(model.itm_scores).parameters
    except (TypeError, ValueError):
        return False


def image_batches(img_sorted: torch.Tensor, batch_size: int) -> list[tuple[int, int]]:
    """``(start, end)`` batches over pairs sorted by image: whole images packed greedily up to
    ``batch_size`` pairs (an image with more pairs is split), so most batches read one image
    and its cross-attention keys/values are a broadcast view instead of a per-pair copy."""
    _, counts = torch.unique_consecutive(img_sorted, return_counts=True)
    bounds, start, end = [], 0, 0
    for c in counts.tolist():  # one step per image
        if end - start + c > batch_size and end > start:
            bounds.append((start, end))
            start = end
        end += c
        while end - start > batch_size:
            bounds.append((start, start + batch_size))
            start += batch_size
    if end > start:
        bounds.append((start, end))
    return bounds


# texts whose ITM text states (model.itm_text_states, (Q + T) x H floats per text: ~200 KB
# at BERT-base width, 32 queries, 35 tokens) are held at once; an image's cross-attention
# keys/values are projected again in every chunk it has pairs in
TEXT_STATES_CHUNK = 4096


def _width(mask: torch.Tensor) -> int:
    """Columns up to the last one that is not padding in every row (at least 1)."""
    used = mask.any(0).nonzero()
    return int(used.max()) + 1 if used.numel() else 1


@torch.no_grad()
def itm_pair_scores(model, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    img: torch.Tensor, txt: torch.Tensor, batch_size: int) -> torch.Tensor:
    """ITM score of each pair (``image_embeds[img[j]]``, text ``txt[j]``), at most ``batch_size``
    pairs per forward.

    Pairs are scored grouped by image (:func:`image_batches`); a model whose ``itm_scores``
    takes ``image_index`` then projects each image's cross-attention keys/values once per
    batch instead of once per pair. A model with ``itm_text_states`` computes the part of
    the ITM pass that sees no image once per text (in chunks of ``TEXT_STATES_CHUNK``
    texts), not once per pair. Trailing columns that are padding in every text of a batch
    are cut (they are masked out anyway).
    """
    device = model_device(model)
    shared = _itm_takes(model, "image_index")
    per_text = hasattr(model, "itm_text_states") and _itm_takes(model, "text_states")
    chunk = TEXT_STATES_CHUNK if per_text else max(input_ids.shape[0], 1)
    out = torch.empty(img.numel())
    for first in range(0, input_ids.shape[0], chunk):
        in_chunk = ((txt >= first) & (txt < first + chunk)).nonzero().squeeze(1)
        if not in_chunk.numel():
            continue
        states = {}
        if per_text:
            width = _width(attention_mask[first : first + chunk])
            states["text_states"] = model.itm_text_states(input_ids[first : first + chunk, :width],
                                                          attention_mask[first : first + chunk, :width])
        order = in_chunk[torch.argsort(img[in_chunk], stable=True)]
        for s, e in image_batches(img[order], batch_size):
            sel = order[s:e]
            mask = attention_mask[txt[sel]]
            width = _width(mask)
            ids, mask = input_ids[txt[sel], :width].to(device), mask[:, :width].to(device)
            if per_text:
                states["text_index"] = (txt[sel] - first).to(device)
            if shared:
                uniq, inverse = torch.unique(img[sel], return_inverse=True)
                scores = model.itm_scores(image_embeds[uniq.to(image_embeds.device)], ids, mask,
                                          image_index=inverse.to(device), **states)
            else:
                scores = model.itm_scores(image_embeds[img[sel].to(image_embeds.device)], ids, mask, **states)
            out[sel] = scores.float().cpu()
    return out


def candidate_pairs(sim: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each image's top-k texts and each text's top-k images by ITC similarity.

    Returns:
        ``(i2t_idx (N, k), t2i_idx (M, k), pairs)``: ``pairs`` is the union of both sets as
        sorted flat ids ``image * M + text`` (sorted = grouped by image), each pair once.
    """
    n, m = sim.shape
    i2t_idx = sim.topk(min(k, m), dim=1).indices
    t2i_idx = sim.t().topk(min(k, n), dim=1).indices
    flat_i2t = torch.arange(n)[:, None] * m + i2t_idx
    flat_t2i = t2i_idx * m + torch.arange(m)[:, None]
    return i2t_idx, t2i_idx, torch.unique(torch.cat([flat_i2t.reshape(-1), flat_t2i.reshape(-1)]))


@torch.no_grad()
def score_pairs(model, images: ImageEmbeddings, texts: dict, pairs: torch.Tensor, n_texts: int,
                itm_batch_size: int) -> torch.Tensor:
    """ITM score of every pair id, each computed once, on the rank that holds its image;
    only the scores travel between ranks."""
    img, txt = pairs // n_texts, pairs % n_texts
    mine = (images.owner[img] == D.get_rank()).nonzero().squeeze(1)
    local = torch.empty(0)
    if mine.numel():
        local = itm_pair_scores(model, images.embeds, texts["input_ids"], texts["attention_mask"],
                                images.local_row[img[mine]], txt[mine], itm_batch_size)
    if D.get_world_size() == 1:
        return local
    scores = torch.empty(pairs.numel())
    for where, vals in D.all_gather_object((mine, local)):
        scores[where] = vals
    return scores


def _scatter(shape, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.full(shape, -100.0).scatter_(1, idx, values)


@TASKS.register("retrieval", config=RetrievalTaskConfig)
class RetrievalTask(BaseTask):
    """Image-text retrieval: recall@1/5/10 image->text and text->image."""

    config_class = RetrievalTaskConfig

    def __init__(self, settings=None):
        super().__init__(settings)
        check_fusion(self.cfg.fusion)
        if self.cfg.agg_metric not in AGG_METRICS:
            raise ConfigError(f"run.agg_metric: unknown '{self.cfg.agg_metric}'; valid: {', '.join(AGG_METRICS)}"
                              f"{did_you_mean(self.cfg.agg_metric, AGG_METRICS)}")

    @torch.no_grad()
    def evaluate(self, model, data_loader, *, split: str, epoch: int | None = None,
                 output_dir: str | Path | None = None) -> dict:
        return retrieval_evaluate(model, data_loader, self.cfg, split=split, epoch=epoch, output_dir=output_dir)


@torch.no_grad()
def retrieval_scores(model, data_loader, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """``(i2t (N images x M texts), t2i (M x N))`` score matrices of the loader's dataset.

    ITC similarity for every pair; each image's and each text's top ``cfg.k_test``
    candidates re-scored by ITM (fused with ITC per ``cfg.fusion``), a pair that is in
    both top-k sets scored once; -100 outside the top-k. The same on every rank.
    """
    if not supports_retrieval(model):
        missing = [m for m in RETRIEVAL_METHODS if not hasattr(model, m)]
        raise ConfigError(f"retrieval needs a stage-1 model; {type(model).__name__} lacks {missing}")
    images = embed_images(model, data_loader)
    texts = embed_texts(model, list(data_loader.dataset.text), cfg.text_batch_size)
    device = model_device(model)
    sim = model.itc_similarity(images.feat.to(device), texts["feat"].to(device)).float().cpu()
    n, m = sim.shape
    i2t_idx, t2i_idx, pairs = candidate_pairs(sim, cfg.k_test)
    itm = score_pairs(model, images, texts, pairs, m, cfg.itm_batch_size)

    def fused(flat: torch.Tensor) -> torch.Tensor:
        score = itm[torch.searchsorted(pairs, flat)]
        # LAVIS: score = ITM logit (fp32) + the ITC similarity of the pair
        return score + sim.view(-1)[flat] if cfg.fusion == "itm+itc" else score

    i2t = _scatter((n, m), i2t_idx, fused(torch.arange(n)[:, None] * m + i2t_idx))
    t2i = _scatter((m, n), t2i_idx, fused(t2i_idx * m + torch.arange(m)[:, None]))
    return i2t, t2i


def retrieval_evaluate(model, data_loader, cfg, *, split: str, epoch: int | None, output_dir) -> dict:
    """Score matrices both ways, then recall (same dict on every rank)."""
    ds = data_loader.dataset
    for attr in ("text", "txt2img", "img2txt"):
        if not hasattr(ds, attr):
            raise DataError(f"retrieval split '{split}': dataset {type(ds).__name__} has no '{attr}' "
                            f"(use a retrieval eval dataset)")
    i2t, t2i = retrieval_scores(model, data_loader, cfg)
    metrics = None
    if D.is_main_process():
        metrics = retrieval_recall(i2t.numpy(), t2i.numpy(), ds.img2txt, ds.txt2img,
                                   agg_metric=getattr(cfg, "agg_metric", None) or "r_mean")
        if output_dir is not None:
            name = f"{split}_epoch{epoch}_retrieval.json" if epoch is not None else f"{split}_retrieval.json"
            write_json_atomic(Path(output_dir) / "result" / name, metrics)
    return D.broadcast_object(metrics)
