"""Retrieval evaluation over N images x 5N texts: the ``retrieval`` task vs the LAVIS way.

Ours: :func:`lavislike.tasks.retrieval.retrieval_scores` (what the registered
``retrieval`` task runs before computing recall) on a ``from_hf`` model: batched ITC
similarity, then each query's top-k re-ranked with batched ITM, fusion ``itm+itc``.
Reference: transformers' ``Blip2ForImageTextRetrieval`` modules driven as LAVIS's
``compute_sim_matrix`` does: image and text features in batches, the similarity matrix
image by image, then one ITM forward per query over its k candidates (image -> text, then
text -> image), score = ITM + ITC. Parity: both score matrices and the recalls.

Run: ``.venv/bin/python bench/retrieval.py [--size small|base] [--threads N]``
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import common
from common import Row


class RetrievalSet(Dataset):
    """N images with 5 captions each, in the layout retrieval eval datasets have."""

    def __init__(self, pixels: torch.Tensor, texts_per_image: int):
        self.pixels = pixels
        n = pixels.shape[0]
        self.text = [f"{common.CAPTIONS[(i * 7 + j) % len(common.CAPTIONS)]} number {i}"
                     for i in range(n) for j in range(texts_per_image)]
        self.img2txt = {i: list(range(i * texts_per_image, (i + 1) * texts_per_image)) for i in range(n)}
        self.txt2img = {t: t // texts_per_image for t in range(len(self.text))}

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"image": self.pixels[i], "index": i}


@torch.no_grad()
def lavis_scores(hf, tok, pixels: torch.Tensor, texts: list[str], k: int, batch: int = 16):
    """LAVIS ``compute_sim_matrix`` with transformers' modules (ITM + ITC fusion)."""
    image_embeds, image_feats = [], []
    for start in range(0, pixels.shape[0], batch):
        vision = hf.vision_model(pixel_values=pixels[start : start + batch]).last_hidden_state
        queries = hf.query_tokens.expand(vision.shape[0], -1, -1)
        out = hf.qformer(query_embeds=queries, encoder_hidden_states=vision,
                         encoder_attention_mask=torch.ones(vision.shape[:-1], dtype=torch.long)).last_hidden_state
        image_embeds.append(vision)
        image_feats.append(F.normalize(hf.vision_projection(out), dim=-1))
    image_embeds, image_feats = torch.cat(image_embeds), torch.cat(image_feats)
    enc = tok(texts, padding="longest", truncation=True, max_length=35, return_tensors="pt")
    text_ids, text_atts = enc.input_ids, enc.attention_mask
    text_feats = []
    for start in range(0, len(texts), 256):
        ids, atts = text_ids[start : start + 256], text_atts[start : start + 256]
        out = hf.qformer(query_embeds=hf.embeddings(input_ids=ids), query_length=0,
                         attention_mask=atts).last_hidden_state
        text_feats.append(F.normalize(hf.text_projection(out[:, 0]), dim=-1))
    text_feats = torch.cat(text_feats)
    sims = torch.stack([(feat @ text_feats.t()).max(0).values for feat in image_feats])

    def itm(image_inputs, ids, atts):
        queries = hf.query_tokens.expand(image_inputs.shape[0], -1, -1)
        att = torch.cat([torch.ones(queries.shape[:-1], dtype=torch.long), atts], 1)
        out = hf.qformer(query_embeds=hf.embeddings(input_ids=ids, query_embeds=queries),
                         query_length=queries.shape[1], attention_mask=att, encoder_hidden_states=image_inputs,
                         encoder_attention_mask=torch.ones(image_inputs.shape[:-1], dtype=torch.long))
        return hf.itm_head(out.last_hidden_state[:, : queries.shape[1]])[:, :, 1].mean(1)

    i2t = torch.full((len(image_feats), len(texts)), -100.0)
    for i, row in enumerate(sims):
        topk_sim, topk_idx = row.topk(k)
        score = itm(image_embeds[i].repeat(k, 1, 1), text_ids[topk_idx], text_atts[topk_idx])
        i2t[i, topk_idx] = score + topk_sim
    t2i = torch.full((len(texts), len(image_feats)), -100.0)
    for i, row in enumerate(sims.t()):
        topk_sim, topk_idx = row.topk(k)
        score = itm(image_embeds[topk_idx], text_ids[i].repeat(k, 1), text_atts[i].repeat(k, 1))
        t2i[i, topk_idx] = score + topk_sim
    return i2t, t2i


def run(args) -> list[Row]:
    from lavislike.models import from_hf
    from lavislike.tasks.retrieval import RetrievalTaskConfig, retrieval_scores
    from lavislike.tasks.retrieval_metrics import retrieval_recall

    common.header("retrieval evaluation", args)
    r = args.sizes["retrieval"]
    with tempfile.TemporaryDirectory() as tmp:
        hf, tok = common.build_stage1(Path(tmp), args.sizes, args.seed)
        ours = from_hf(tmp)
        ours.tokenizer  # read while the folder exists
    pixels = common.images(r["images"], args.sizes["vision"]["image_size"], args.seed + 2)
    data = RetrievalSet(pixels, r["texts_per_image"])
    loader = DataLoader(data, batch_size=16, shuffle=False)
    k = min(r["k"], len(data.text), len(data))
    cfg = RetrievalTaskConfig(k_test=k, itm_batch_size=128, text_batch_size=256, fusion="itm+itc")

    mine = retrieval_scores(ours, loader, cfg)
    ref = lavis_scores(hf, tok, pixels, data.text, k)
    diff = common.check_parity("i2t / t2i score matrices", common.max_abs_diff(mine, ref))
    rec_ours = retrieval_recall(mine[0].numpy(), mine[1].numpy(), data.img2txt, data.txt2img)
    rec_ref = retrieval_recall(ref[0].numpy(), ref[1].numpy(), data.img2txt, data.txt2img)
    if rec_ours != rec_ref:
        raise SystemExit(f"parity check failed: recalls differ {rec_ours} vs {rec_ref}")

    t_ours, t_ref = common.time_pair(lambda: retrieval_scores(ours, loader, cfg),
                                     lambda: lavis_scores(hf, tok, pixels, data.text, k),
                                     args.repeats, args.warmup)
    n = len(data)
    return [Row(f"retrieval eval ({n} img x {len(data.text)} txt)", t_ours, t_ref, diff, f"k={k}, ITM+ITC")]


if __name__ == "__main__":
    common.main_wrapper(run, __doc__)
