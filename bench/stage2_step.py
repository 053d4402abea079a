"""Stage-2 training step: lavislike ``blip2_opt`` vs transformers' ``Blip2ForConditionalGeneration``.

Both get the same frozen settings: ``requires_grad=False`` and eval mode on the vision
tower and on OPT; the Q-Former, the query tokens, the projection and ``ln_vision``
(transformers' ``post_layernorm``, trained in LAVIS's recipe) train. The step is
the LM loss (the caption after the visual prompt, queries masked with -100), its backward
and the optimizer update (ours: the runner's AdamW; transformers: ``Trainer``'s default,
fused AdamW), with the Q-Former's dropout (0.1) on; parity is checked first, dropout off. transformers takes ``input_ids`` with one ``<image>`` placeholder per query
and ``labels``; ours takes the captions (its tokenization is inside the timed step).

Run: ``.venv/bin/python bench/stage2_step.py [--size small|base] [--threads N]``
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import common
from common import Row


def hf_batch(hf, tok, texts: list[str], suffix: str = "\n", side: str = "right"):
    """``input_ids`` / ``attention_mask`` with the ``<image>`` placeholders in front of each text."""
    nq = hf.config.num_query_tokens
    rows = [[hf.config.image_token_index] * nq + tok(t + suffix).input_ids for t in texts]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), tok.pad_token_id)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(length - len(r), length) if side == "left" else slice(0, len(r))
        ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
    return ids, mask


def load_pair(args):
    """``(hf, ours, tok)`` on the same random weights."""
    from lavislike.models import from_hf

    with tempfile.TemporaryDirectory() as tmp:
        hf, tok = common.build_stage2(Path(tmp), args.sizes, args.seed)
        ours = from_hf(tmp)
        ours.llm.tokenizer  # read while the folder exists
    return hf, ours, tok


def run(args) -> list[Row]:
    common.header("stage-2 step", args)
    s = args.sizes
    hf, ours, tok = load_pair(args)
    hf.train()
    common.freeze_vision_as_lavis(hf)
    hf.language_model.requires_grad_(False)
    hf.language_model.eval()
    ours.train()
    bs = s["batch"]
    pixels = common.images(bs, s["vision"]["image_size"], args.seed)
    texts = common.captions(bs)
    ids, mask = hf_batch(hf, tok, texts)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, : hf.config.num_query_tokens] = -100
    samples = {"image": pixels, "text_input": texts}

    def ours_loss():
        return ours(samples)["loss"]

    def ref_loss():
        return hf(pixel_values=pixels, input_ids=ids, attention_mask=mask, labels=labels).loss

    grads = {}
    for name, model, fn, params in (
        ("ours", ours, ours_loss, lambda m: (m.llm_proj.weight.grad, m.qformer.query_tokens.grad,
                                             m.ln_vision.weight.grad)),
        ("ref", hf, ref_loss, lambda m: (m.language_projection.weight.grad, m.query_tokens.grad,
                                         m.vision_model.post_layernorm.weight.grad)),
    ):
        model.zero_grad(set_to_none=True)
        loss = fn()
        loss.backward()
        grads[name] = (loss.detach(), *[g.clone() for g in params(model)])
    diff = common.check_parity("LM loss", common.max_abs_diff(grads["ours"][0], grads["ref"][0]))
    common.check_parity("gradients (projection, queries, ln_vision)",
                        common.max_abs_diff(grads["ours"][1:], grads["ref"][1:]))

    # the training steps: our runner's optimizer, transformers Trainer's default one; the
    # Q-Former's dropout on as both configure it for training (OPT and the ViT are frozen, in
    # eval mode)
    ours_train = common.train_step(common.ours_optimizer(ours), ours_loss)
    ref_train = common.train_step(common.trainer_optimizer(hf), ref_loss)

    common.set_dropout(common.TRAIN_DROPOUT, ours.qformer, hf.qformer)
    t_ours, t_ref = common.time_pair(ours_train, ref_train, args.repeats, args.warmup)
    rows = [Row("stage-2 train step (LM loss)", t_ours, t_ref, diff,
                f"batch {bs}, OPT frozen, AdamW, dropout {common.TRAIN_DROPOUT}", goal=0.70)]
    common.set_dropout(0.0, ours.qformer, hf.qformer)
    rows += cache_rows(args, ours, samples)
    fp32_loss = grads["ours"][0]
    wrap = common.recommended(ours)
    rec_loss = wrap(ours_loss)()
    common.set_dropout(common.TRAIN_DROPOUT, ours.qformer, hf.qformer)
    t_rec, t_ref = common.time_pair(wrap(ours_train), ref_train, args.repeats, args.warmup)
    rows.append(Row("stage-2 train step, recommended CPU cfg", t_rec, t_ref, common.rel_diff(rec_loss, fp32_loss),
                    "bf16 frozen + autocast; parity = rel. loss diff"))
    return rows


def cache_rows(args, ours, samples) -> list[Row]:
    """A stage-2 epoch (``batches`` steps) from images vs from a frozen-feature cache on disk
    (memory-mapped, read per sample as training does); both are ours, fp32 model. bf16: the
    random bench ViT's features are ~1e-8, below fp16's range (real ViT features are O(1))."""
    from lavislike.datasets.feature_cache import write_cache

    batches = 4
    image = samples["image"]
    with torch.no_grad():
        feats = ours.image_encoder(image)
    with tempfile.TemporaryDirectory() as tmp:
        keys = [f"img{i}" for i in range(batches * len(image))]
        cache = write_cache(tmp, keys, [feats] * batches, [], {}, "bf16")

        def from_images():
            for _ in range(batches):
                ours.zero_grad(set_to_none=True)
                ours(samples)["loss"].backward()

        def from_cache():
            for b in range(batches):
                rows = [cache.features(k) for k in keys[b * len(image):(b + 1) * len(image)]]
                ours.zero_grad(set_to_none=True)
                ours({"text_input": samples["text_input"], "image_features": torch.stack(rows)})["loss"].backward()

        with torch.no_grad():
            embeds = ours.image_embeds(samples)
            cached = ours.image_embeds({"image_features": torch.stack([cache.features(k) for k in keys[:len(image)]])})
        t_cache, t_img = common.time_pair(from_cache, from_images, max(1, args.repeats - 1), args.warmup)
    return [Row(f"stage-2 epoch from bf16 cache ({batches} steps)", t_cache, t_img, common.rel_diff(cached, embeds),
                "vs from image tensors (no decode); parity = rel. feature error")]


if __name__ == "__main__":
    common.main_wrapper(run, __doc__)
