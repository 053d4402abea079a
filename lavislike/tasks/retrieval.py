"""``retrieval``: ITC similarity for all pairs, the top-k candidates re-ranked with ITM.

The re-ranking is batched over (query, candidate) pairs, ``itm_batch_size`` at a time and
grouped by image (each image's cross-attention keys/values are projected once per batch),
with the query rows sharded across ranks. Fusion: ``itm`` (the paper: the ITM score alone) or
``itm+itc`` (LAVIS: ITM score + ITC similarity). Candidates outside the top-k score -100.
"""

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any


import torch

from lavislike.common import dist as D
from lavislike.common.io import write_json_atomic
from lavislike.errors import ConfigError, DataError
from lavislike.registry import TASKS
from lavislike.tasks.base_task import BaseTask, model_device
from lavislike.tasks.retrieval_metrics import retrieval_recall

logger = logging.getLogger("lavislike")

FUSIONS = ("itm", "itm+itc")
RETRIEVAL_METHODS = ("retrieval_image_embeds", "retrieval_text_embeds", "itm_scores", "itc_similarity")


@dataclass
class RetrievalEvalConfig:
    """Run keys of zero-shot retrieval scoring (``retrieval``, and the stage-1 validation
    of ``image_text_pretrain``)."""

    k_test: int = 128  # ITC candidates re-ranked by ITM per query
    itm_batch_size: int = 128  # (query, candidate) pairs per ITM forward
    text_batch_size: int = 256
    fusion: str = "itm"  # itm (paper) | itm+itc (LAVIS)


@dataclass
class RetrievalTaskConfig(RetrievalEvalConfig):
    """Run keys read by ``retrieval``."""

    task: str = "retrieval"


def check_fusion(fusion: str) -> None:
    if fusion not in FUSIONS:
        raise ConfigError(f"run.fusion: unknown '{fusion}'; valid: {', '.join(FUSIONS)}")


def supports_retrieval(model: Any) -> bool:
    return all(hasattr(model, m) for m in RETRIEVAL_METHODS)


def _shard(n: int) -> range:
    return range(D.get_rank(), n, D.get_world_size())


@torch.no_grad()
def embed_images(model, data_loader) -> dict[str, torch.Tensor]:
    """ITC features / ITM embeddings of every image in the (rank-sharded) loader, in index order."""
    device = model_device(model)
    feats, embeds, index = [], [], []
    for batch in data_loader:
        if batch.pop("bad_samples", None):
            raise DataError("retrieval evaluation needs every image; unreadable images found")
        key = "image" if "image" in batch else "video"
        out = model.retrieval_image_embeds(batch[key].to(device))
        feats.append(out["feat"].cpu())
        embeds.append(out["embeds"].cpu())
        index.append(batch["index"].cpu() if "index" in batch else batch["image_id"].cpu())
    local = (torch.cat(feats), torch.cat(embeds), torch.cat(index)) if feats else None
    parts = [p for p in D.all_gather_object(local) if p is not None]
    feat, emb, idx = (torch.cat(x) for x in zip(*parts))
    order = torch.argsort(idx)
    return {"feat": feat[order], "embeds": emb[order]}


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


def _takes_image_index(model) -> bool:
    try:
        return "image_index" in inspect.signature(model.itm_scores).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def itm_pair_scores(model, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    img: torch.Tensor, txt: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """ITM score of each pair (``image_embeds[img[j]]``, text ``txt[j]``), ``batch_size`` at a time.

    Pairs are scored grouped by image, so a batch reads few distinct images; a model whose
    ``itm_scores`` takes ``image_index`` then projects each image's cross-attention
    keys/values once per batch instead of once per pair. Trailing columns that are padding
    in every text of a batch are cut (they are masked out anyway).
    """
    order = torch.argsort(img, stable=True)
    shared = _takes_image_index(model)
    out = torch.empty(img.numel())
    for s in range(0, order.numel(), batch_size):
        sel = order[s : s + batch_size]
        mask = attention_mask[txt[sel]]
        used = mask.any(0).nonzero()
        width = int(used.max()) + 1 if used.numel() else 1
        ids, mask = input_ids[txt[sel], :width].to(device), mask[:, :width].to(device)
        if shared:
            uniq, inverse = torch.unique(img[sel], return_inverse=True)
            scores = model.itm_scores(image_embeds[uniq].to(device), ids, mask, image_index=inverse.to(device))
        else:
            scores = model.itm_scores(image_embeds[img[sel]].to(device), ids, mask)
        out[sel] = scores.float().cpu()
    return out


@torch.no_grad()
def rerank(model, sim: torch.Tensor, image_embeds: torch.Tensor, input_ids: torch.Tensor,
           attention_mask: torch.Tensor, *, queries_are_images: bool, k: int, itm_batch_size: int,
           fusion: str) -> torch.Tensor:
    """Score matrix (queries x candidates): ITM (+ITC) on each query's top-k, -100 elsewhere."""
    device = model_device(model)
    n_q, n_c = sim.shape
    k = min(k, n_c)
    rows = torch.tensor(list(_shard(n_q)), dtype=torch.long)
    scores = torch.full((n_q, n_c), -100.0)
    if len(rows):
        top_sim, top_idx = sim[rows].topk(k, dim=1)
        q = rows[:, None].expand(-1, k).reshape(-1)
        c = top_idx.reshape(-1)
        img, txt = (q, c) if queries_are_images else (c, q)
        itm = itm_pair_scores(model, image_embeds, input_ids, attention_mask, img, txt, itm_batch_size, device)
        fused = itm.view(-1, k) + (top_sim.float() if fusion == "itm+itc" else 0.0)
        scores[rows[:, None], top_idx] = fused
    if D.get_world_size() > 1:
        parts = D.all_gather_object((rows, scores[rows]))
        for r, s in parts:
            scores[r] = s
    return scores


@TASKS.register("retrieval", config=RetrievalTaskConfig)
class RetrievalTask(BaseTask):
    """Image-text retrieval: recall@1/5/10 image->text and text->image."""

    config_class = RetrievalTaskConfig

    def __init__(self, settings=None):
        super().__init__(settings)
        check_fusion(self.cfg.fusion)

    @torch.no_grad()
    def evaluate(self, model, data_loader, *, split: str, epoch: int | None = None,
                 output_dir: str | Path | None = None) -> dict:
        return retrieval_evaluate(model, data_loader, self.cfg, split=split, epoch=epoch, output_dir=output_dir)


@torch.no_grad()
def retrieval_scores(model, data_loader, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """``(i2t (N images x M texts), t2i (M x N))`` score matrices of the loader's dataset.

    ITC similarity for every pair, then each query's top ``cfg.k_test`` candidates re-scored
    by ITM (fused with ITC per ``cfg.fusion``); -100 outside the top-k.
    """
    if not supports_retrieval(model):
        missing = [m for m in RETRIEVAL_METHODS if not hasattr(model, m)]
        raise ConfigError(f"retrieval needs a stage-1 model; {type(model).__name__} lacks {missing}")
    images = embed_images(model, data_loader)
    texts = embed_texts(model, list(data_loader.dataset.text), cfg.text_batch_size)
    device = model_device(model)
    sim = model.itc_similarity(images["feat"].to(device), texts["feat"].to(device)).float().cpu()
    common = dict(k=cfg.k_test, itm_batch_size=cfg.itm_batch_size, fusion=cfg.fusion)
    i2t = rerank(model, sim, images["embeds"], texts["input_ids"], texts["attention_mask"],
                 queries_are_images=True, **common)
    t2i = rerank(model, sim.t().contiguous(), images["embeds"], texts["input_ids"], texts["attention_mask"],
                 queries_are_images=False, **common)
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
        metrics = retrieval_recall(i2t.numpy(), t2i.numpy(), ds.img2txt, ds.txt2img)
        if output_dir is not None:
            name = f"{split}_epoch{epoch}_retrieval.json" if epoch is not None else f"{split}_retrieval.json"
            write_json_atomic(Path(output_dir) / "result" / name, metrics)
    return D.broadcast_object(metrics)
