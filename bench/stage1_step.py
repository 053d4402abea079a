"""Stage-1 training step: lavislike vs transformers' ``Blip2ForImageTextRetrieval``.

transformers has no stage-1 losses, so the compared step is what both can compute: the
frozen vision tower (under ``no_grad``), the ITC image and text passes, the ITC similarity
matrix, the ITM logits of the B positive pairs, a loss built from both (contrastive
cross-entropy over the similarity + ITM cross-entropy) and its backward into the Q-Former.
The reference drives transformers' own modules exactly as its ``forward`` does, once per
pass (calling ``forward`` twice would run the vision tower twice). Our full
ITC + ITM (hard negatives) + ITG step is timed on its own: it has no reference.

Run: ``.venv/bin/python bench/stage1_step.py [--size small|base] [--threads N]``
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import common
from common import Row


def _loss(sim: torch.Tensor, itm: torch.Tensor) -> torch.Tensor:
    targets = torch.arange(sim.shape[0])
    return (F.cross_entropy(sim / 0.07, targets) + F.cross_entropy(sim.t() / 0.07, targets)
            + F.cross_entropy(itm, torch.ones(itm.shape[0], dtype=torch.long)))


def ours_outputs(model, pixels, ids, mask):
    embeds = model.encode_image(pixels)  # frozen encoder: no_grad inside
    # as our training forward does: the images' cross-attention keys/values projected once
    # for the ITC and ITM passes
    image_kv = model.qformer.cross_kv(embeds)
    # and one word-embedding lookup for the text and ITM passes
    words = model.qformer.embeddings.word_embeddings(ids)
    _, image_feat = model._image_pass(embeds, image_kv=image_kv)
    text_feat = model._text_feat(ids, mask, words)
    sim = model.itc_similarity(image_feat, text_feat)
    itm = model.itm_logits(None, ids, mask, image_kv=image_kv, word_embeds=words)
    return sim, itm


def ref_outputs(hf, pixels, ids, mask):
    """transformers' modules, computing what ``Blip2ForImageTextRetrieval.forward`` does."""
    with torch.no_grad():
        vision = hf.vision_model(pixel_values=pixels).last_hidden_state
    image_atts = torch.ones(vision.shape[:-1], dtype=torch.long)
    queries = hf.query_tokens.expand(vision.shape[0], -1, -1)
    q_out = hf.qformer(query_embeds=queries, encoder_hidden_states=vision,
                       encoder_attention_mask=image_atts).last_hidden_state
    image_feat = F.normalize(hf.vision_projection(q_out), dim=-1)
    t_out = hf.qformer(query_embeds=hf.embeddings(input_ids=ids), query_length=0,
                       attention_mask=mask).last_hidden_state
    text_feat = F.normalize(hf.text_projection(t_out[:, 0, :]), dim=-1)
    sim = torch.matmul(image_feat, text_feat.t()).max(dim=1).values
    att = torch.cat([torch.ones(queries.shape[:-1], dtype=torch.long), mask], 1)
    m_out = hf.qformer(query_embeds=hf.embeddings(input_ids=ids, query_embeds=queries),
                       query_length=queries.shape[1], attention_mask=att, encoder_hidden_states=vision,
                       encoder_attention_mask=image_atts).last_hidden_state
    itm = hf.itm_head(m_out[:, : queries.shape[1]]).mean(dim=1)
    return sim, itm


def run(args) -> list[Row]:
    from lavislike.models import from_hf
    from lavislike.models.blip2 import Blip2Qformer

    common.header("stage-1 step", args)
    s = args.sizes
    with tempfile.TemporaryDirectory() as tmp:
        hf, tok = common.build_stage1(Path(tmp), s, args.seed)
        ours = from_hf(tmp)
        ours.tokenizer  # read while the folder exists
    hf.vision_model.requires_grad_(False)
    hf.train()
    hf.vision_model.eval()
    ours.train()
    bs = s["batch"]
    pixels = common.images(bs, s["vision"]["image_size"], args.seed)
    texts = common.captions(bs)
    enc = tok(texts, padding="longest", truncation=True, max_length=32, return_tensors="pt")
    ids, mask = enc.input_ids, enc.attention_mask

    # parity: outputs, loss and the gradient of the queries and the first cross-attention
    with torch.no_grad():
        ref_itm = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask,
                     use_image_text_matching_head=True).logits_per_image
    outs = {}
    for name, model, fn, grads in (
        ("ours", ours, ours_outputs, lambda m: (m.qformer.query_tokens.grad,
                                                 m.qformer.layers[0].cross_attn.key.weight.grad)),
        ("ref", hf, ref_outputs, lambda m: (m.query_tokens.grad,
                                             m.qformer.encoder.layer[0].crossattention.attention.key.weight.grad)),
    ):
        model.zero_grad(set_to_none=True)
        sim, itm = fn(model, pixels, ids, mask)
        loss = _loss(sim, itm)
        loss.backward()
        outs[name] = (sim.detach(), itm.detach(), loss.detach(), *[g.clone() for g in grads(model)])
    common.check_parity("reference ITM == transformers forward", common.max_abs_diff(outs["ref"][1], ref_itm))
    diff = common.check_parity("ITC sim, ITM logits, loss", common.max_abs_diff(outs["ours"][:3], outs["ref"][:3]))
    common.check_parity("gradients (queries, cross-attn key)", common.max_abs_diff(outs["ours"][3:], outs["ref"][3:]))

    def ours_step():
        ours.zero_grad(set_to_none=True)
        _loss(*ours_outputs(ours, pixels, ids, mask)).backward()

    def ref_step():
        hf.zero_grad(set_to_none=True)
        _loss(*ref_outputs(hf, pixels, ids, mask)).backward()

    t_ours, t_ref = common.time_pair(ours_step, ref_step, args.repeats, args.warmup)
    rows = [Row("stage-1 step (ITC+ITM fwd+bwd)", t_ours, t_ref, diff, f"batch {bs}, vs LAVIS-style passes",
                goal=0.65, gflops=common.count_gflops(ours_step))]

    samples = {"image": pixels, "text_input": texts, "image_id": torch.arange(bs)}

    def full_step():
        # from_hf builds blip2_image_text_matching, whose forward scores pairs; the training
        # forward is its parent's
        ours.zero_grad(set_to_none=True)
        Blip2Qformer.forward(ours, samples)["loss"].backward()

    rows.append(Row("stage-1 full loss step (ours only)", common.time_one(full_step, args.repeats, args.warmup),
                    None, None, "ITC+ITM(hard neg)+ITG"))

    # the recommended CPU configuration: frozen ViT in bf16, bf16 autocast (reference: fp32)
    with torch.no_grad():
        feats32 = ours.image_encoder(pixels)
    t_vit32 = common.time_one(lambda: ours.encode_image(pixels), args.repeats, args.warmup)
    wrap = common.recommended(ours)
    with torch.no_grad():
        feats16 = ours.image_encoder(pixels)
    t_vit16 = common.time_one(lambda: ours.encode_image(pixels), args.repeats, args.warmup)
    rows.append(Row("frozen ViT, bf16 vs our fp32", t_vit16, t_vit32, common.rel_diff(feats16, feats32),
                    "parity = relative feature error"))
    rec_loss = wrap(lambda: _loss(*ours_outputs(ours, pixels, ids, mask)))()
    t_rec, t_ref = common.time_pair(wrap(ours_step), ref_step, args.repeats, args.warmup)
    rows.append(Row("stage-1 step, recommended CPU cfg", t_rec, t_ref, common.rel_diff(rec_loss, outs["ours"][2]),
                    "bf16 frozen + autocast; parity = rel. loss diff", goal=0.45))
    return rows


if __name__ == "__main__":
    common.main_wrapper(run, __doc__)
