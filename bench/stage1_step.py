"""Stage-1 training step: lavislike against LAVIS's and transformers' computation.

* ``stage-1 train step (ITC+ITM+ITG)`` (issue 13's row): our whole training step - forward,
  backward (ITC, ITM with hard negatives, ITG) and the runner's AdamW update, Q-Former
  dropout 0.1 as configured for training - against LAVIS's ``Blip2Qformer.forward`` re-implemented
  on transformers' modules (``lavis_stage1.py``: texts padded to 32 tokens, the ITM pass over
  3B pairs projecting every pair's image, ITG reusing the image pass's query keys/values, the
  LM head on every text position; ``--lavis-attention``: eager as LAVIS, or sdpa) with LAVIS's
  runner optimizer (``torch.optim.AdamW``, torch's default implementation), after a check,
  dropout off, that both give the same losses and gradients from the same seed (hard
  negatives).
  The same row for the recommended CPU configuration (bf16 frozen parts, bf16 autocast)
  against the fp32 reference.
* ``stage-1 ITC+ITM passes``: what transformers' ``Blip2ForImageTextRetrieval`` can compute
  (no stage-1 losses there): the frozen vision tower (``ln_vision`` trained), the ITC image and
  text passes, the similarity, the ITM logits of the B positive pairs, a loss from both and
  its backward, driven through its own modules as its ``forward`` does, once per pass.

Run: ``.venv/bin/python bench/stage1_step.py [--size small|base] [--threads N]``
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import common
import lavis_stage1
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
    # the tower's parameters are frozen, so it records nothing but ``post_layernorm`` (trained)
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
    hf.train()
    common.freeze_vision_as_lavis(hf)
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
                                                 m.qformer.layers[0].cross_attn.key.weight.grad,
                                                 m.ln_vision.weight.grad)),
        ("ref", hf, ref_outputs, lambda m: (m.query_tokens.grad,
                                             m.qformer.encoder.layer[0].crossattention.attention.key.weight.grad,
                                             m.vision_model.post_layernorm.weight.grad)),
    ):
        model.zero_grad(set_to_none=True)
        sim, itm = fn(model, pixels, ids, mask)
        loss = _loss(sim, itm)
        loss.backward()
        outs[name] = (sim.detach(), itm.detach(), loss.detach(), *[g.clone() for g in grads(model)])
    common.check_parity("reference ITM == transformers forward", common.max_abs_diff(outs["ref"][1], ref_itm))
    diff = common.check_parity("ITC sim, ITM logits, loss", common.max_abs_diff(outs["ours"][:3], outs["ref"][:3]))
    common.check_parity("gradients (queries, cross-attn key, ln_vision)",
                        common.max_abs_diff(outs["ours"][3:], outs["ref"][3:]))

    def ours_step():
        ours.zero_grad(set_to_none=True)
        _loss(*ours_outputs(ours, pixels, ids, mask)).backward()

    def ref_step():
        hf.zero_grad(set_to_none=True)
        _loss(*ref_outputs(hf, pixels, ids, mask)).backward()

    t_ours, t_ref = common.time_pair(ours_step, ref_step, args.repeats, args.warmup)
    rows = [Row("stage-1 ITC+ITM passes fwd+bwd", t_ours, t_ref, diff,
                f"batch {bs}, vs transformers' modules (no ITG)")]

    # the whole step against LAVIS's stage-1 forward (ITC + ITM with hard negatives + ITG)
    # on transformers' modules with our LM head's weights, the same hard negatives drawn
    # from the same seed
    samples = {"image": pixels, "text_input": texts, "image_id": torch.arange(bs)}
    head = lavis_stage1.lm_head_like(hf, ours.qformer.lm_head)
    temp = float(ours.temp.detach())

    def full_losses():
        # from_hf builds blip2_image_text_matching, whose forward scores pairs; the training
        # forward is its parent's
        return Blip2Qformer.forward(ours, samples)

    def lavis_losses():
        return lavis_stage1.stage1_losses(hf, head, ours.tokenizer, pixels, texts, temp)

    def seeded(fn, params):
        ours.zero_grad(set_to_none=True)
        hf.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        torch.manual_seed(args.seed)  # the hard negatives' draws
        out = fn()
        out["loss"].backward()
        return [out[k].detach() for k in ("loss", "loss_itc", "loss_itm", "loss_lm")] + [p.grad.clone() for p in params]

    # the training steps: LAVIS's runner optimizer over the reference's trainable parameters
    # (the LM head's decoder is the word embeddings), ours over ours; Q-Former dropout on
    named = [(n, p) for n, p in hf.named_parameters() if p.requires_grad]
    named += [(f"cls.predictions.{n}", p) for n, p in head.named_parameters() if n != "decoder.weight"]
    ours_train = common.train_step(common.ours_optimizer(ours), lambda: full_losses()["loss"])
    lavis_train = common.train_step(common.lavis_optimizer(named), lambda: lavis_losses()["loss"])

    with common.attention_kernel(hf, args.lavis_attention):
        full = seeded(full_losses, (ours.qformer.query_tokens, ours.ln_vision.weight))
        full_ref = seeded(lavis_losses, (hf.query_tokens, hf.vision_model.post_layernorm.weight))
        full_diff = common.check_parity("full step: loss, ITC, ITM, ITG, gradient of queries and ln_vision",
                                        common.max_abs_diff(full, full_ref))
        gflops = common.count_gflops(lambda: full_losses()["loss"].backward())
        lavis_gflops = common.count_gflops(lambda: lavis_losses()["loss"].backward())
        common.set_dropout(common.TRAIN_DROPOUT, ours.qformer, hf.qformer)
        t_full, t_lavis = common.time_pair(ours_train, lavis_train, args.repeats, args.warmup)
    rows.append(Row("stage-1 train step (ITC+ITM+ITG)", t_full, t_lavis, full_diff,
                    f"batch {bs}, AdamW, dropout {common.TRAIN_DROPOUT}, vs LAVIS ({args.lavis_attention} attention)",
                    goal=0.65, gflops=gflops, ref_gflops=lavis_gflops))

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
    common.set_dropout(0.0, ours.qformer, hf.qformer)
    rec = seeded(wrap(full_losses), (ours.qformer.query_tokens,))
    common.set_dropout(common.TRAIN_DROPOUT, ours.qformer, hf.qformer)
    with common.attention_kernel(hf, args.lavis_attention):
        t_rec, t_lavis = common.time_pair(wrap(ours_train), lavis_train, args.repeats, args.warmup)
    rows.append(Row("stage-1 train step, recommended CPU cfg", t_rec, t_lavis, common.rel_diff(rec[0], full[0]),
                    "bf16 frozen + autocast vs LAVIS fp32; parity = rel. loss diff", goal=0.45))
    return rows


if __name__ == "__main__":
    common.main_wrapper(run, __doc__)
