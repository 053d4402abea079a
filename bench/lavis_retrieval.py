"""LAVIS's BLIP-2 retrieval scoring (``compute_sim_matrix``) re-implemented on transformers'
``Blip2ForImageTextRetrieval`` modules: the reference of ``bench/retrieval.py`` and of the
retrieval tests (imported by path; it needs only torch).

The loops as LAVIS runs them (``lavis/models/blip2_models/blip2_qformer.py``): texts
tokenised with ``padding="max_length", max_length=35`` in batches of 256; ITC features of
the images batch by batch; the similarity matrix image by image (max over queries); then for
every image its top-k texts and for every text its top-k images, each query one ITM forward
over its k candidates (the image repeated k times, or the text repeated k times), the score
``ITM logit (positive class, mean over queries) + ITC similarity`` (``fusion="itm"``: the
ITM logit alone), -100 elsewhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _ones(x: torch.Tensor) -> torch.Tensor:
    return torch.ones(x.shape[:-1], dtype=torch.long, device=x.device)


def itm_logit(hf, image_inputs: torch.Tensor, ids: torch.Tensor, atts: torch.Tensor) -> torch.Tensor:
    """LAVIS ``compute_itm``: positive-class ITM logit, mean over the query positions."""
    queries = hf.query_tokens.expand(image_inputs.shape[0], -1, -1)
    att = torch.cat([_ones(queries), atts], 1)
    out = hf.qformer(query_embeds=hf.embeddings(input_ids=ids, query_embeds=queries),
                     query_length=queries.shape[1], attention_mask=att, encoder_hidden_states=image_inputs,
                     encoder_attention_mask=_ones(image_inputs))
    return hf.itm_head(out.last_hidden_state[:, : queries.shape[1]])[:, :, 1].mean(1)


def topk_margin(sim: torch.Tensor, k: int) -> float:
    """Smallest gap between the k-th and (k+1)-th candidate of any query, both directions: below
    float noise (~1e-7) the top-k selection, and any comparison of two implementations' scores,
    is decided by rounding."""
    gaps = []
    for s in (sim, sim.t()):
        if s.shape[1] > k:
            v = s.sort(dim=1, descending=True).values
            gaps.append(float((v[:, k - 1] - v[:, k]).min()))
    return min(gaps, default=float("inf"))


@torch.no_grad()
def lavis_compute_sim_matrix(hf, tokenizer, pixels: torch.Tensor, texts: list[str], k: int,
                             image_batch: int = 16, fusion: str = "itm+itc") -> tuple[torch.Tensor, torch.Tensor]:
    """``(score_matrix_i2t (N, M), score_matrix_t2i (M, N))`` as LAVIS computes them (1 process)."""
    text_ids, text_atts, text_embeds = [], [], []
    for start in range(0, len(texts), 256):
        enc = tokenizer(texts[start : start + 256], padding="max_length", truncation=True, max_length=35,
                        return_tensors="pt")
        out = hf.qformer(query_embeds=hf.embeddings(input_ids=enc.input_ids), query_length=0,
                         attention_mask=enc.attention_mask).last_hidden_state
        text_embeds.append(F.normalize(hf.text_projection(out[:, 0]), dim=-1))
        text_ids.append(enc.input_ids)
        text_atts.append(enc.attention_mask)
    text_ids, text_atts, text_embeds = torch.cat(text_ids), torch.cat(text_atts), torch.cat(text_embeds)

    vit_feats, image_embeds = [], []
    for start in range(0, pixels.shape[0], image_batch):
        vit = hf.vision_model(pixel_values=pixels[start : start + image_batch]).last_hidden_state
        query = hf.qformer(query_embeds=hf.query_tokens.expand(vit.shape[0], -1, -1), encoder_hidden_states=vit,
                           encoder_attention_mask=_ones(vit)).last_hidden_state
        vit_feats.append(vit)
        image_embeds.append(F.normalize(hf.vision_projection(query), dim=-1))
    vit_feats, image_embeds = torch.cat(vit_feats), torch.cat(image_embeds)

    sims_matrix = torch.stack([(image_embed @ text_embeds.t()).max(0).values for image_embed in image_embeds])
    add_itc = fusion == "itm+itc"

    score_i2t = torch.full((len(image_embeds), len(texts)), -100.0)
    for i, sims in enumerate(sims_matrix):
        topk_sim, topk_idx = sims.topk(k=k, dim=0)
        score = itm_logit(hf, vit_feats[i].repeat(k, 1, 1), text_ids[topk_idx], text_atts[topk_idx]).float()
        score_i2t[i, topk_idx] = score + topk_sim if add_itc else score

    score_t2i = torch.full((len(texts), len(image_embeds)), -100.0)
    for i, sims in enumerate(sims_matrix.t()):
        topk_sim, topk_idx = sims.topk(k=k, dim=0)
        score = itm_logit(hf, vit_feats[topk_idx], text_ids[i].repeat(k, 1), text_atts[i].repeat(k, 1)).float()
        score_t2i[i, topk_idx] = score + topk_sim if add_itc else score
    return score_i2t, score_t2i
