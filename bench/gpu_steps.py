"""Paper-size training steps on one GPU: lavislike vs transformers' BLIP-2, under AMP.

Stage 1: ViT-g (EVA-CLIP-g widths: 1408 x 39 layers, 224 px / patch 14) + the BERT-base
Q-Former (12 layers, 32 queries), the ITC + ITM step transformers' modules can compute (as
``stage1_step.py``), and the whole ITC + ITM (hard negatives) + ITG step, ours against
LAVIS's ``Blip2Qformer.forward`` (``lavis_stage1.py``: issue 13's stage-1 row).
Stage 2: the same vision and Q-Former + OPT-2.7B widths (2560 x 32 layers, vocabulary
50,272), the LM loss. Batch per GPU as LAVIS's BLIP-2 configs (stage 1: 100, stage 2: 64;
``--batch`` overrides). Random weights (nothing is downloaded); the frozen parts are stored in
the AMP dtype on both sides (``run.frozen_precision``), trainable parts fp32 with fused AdamW.

Prints one line per (stage, implementation): samples/s (median of ``--steps`` training steps
after ``--warmup``, the Q-Former's dropout 0.1 on) and peak GPU memory. Parity is checked in
fp32 on the CPU by ``stage1_step.py`` / ``stage2_step.py``; here each line prints its loss
under AMP with dropout off (the hard negatives drawn from the same seed), which the sides
of a comparison should give to AMP's precision.

Run: ``bash bench/gpu.sh`` (or ``python bench/gpu_steps.py --stage 2 --amp bf16``).
``--device cpu --size small`` runs the same code on the CPU at a small size (a check that the
script works before GPU time is spent on it; ``tests/bench/test_gpu_steps.py``).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import common


def batch(args, stage: int) -> int:
    """Per-device batch: ``--batch``, else the size's (paper: LAVIS's, 100 / 64)."""
    sizes = common.SIZES[args.size]
    return args.batch or (sizes.get("stage2_batch", sizes["batch"]) if stage == 2 else sizes["batch"])


def timed(step, steps: int, warmup: int, device: str) -> tuple[float, float | None]:
    """(median seconds per step, peak GiB on a GPU, else None) of ``step``."""
    cuda = device == "cuda"
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), (torch.cuda.max_memory_allocated() / 2**30 if cuda else None)


def trainer(model, loss_fn, amp: torch.dtype, device: str):
    """A step: forward under autocast, backward, fused AdamW on the trainable parameters."""
    from lavislike.runners.optim import build_optimizer

    opt = build_optimizer(model, 1e-5, 0.05, (0.9, 0.999))
    scaler = torch.amp.GradScaler(device, enabled=amp == torch.float16)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=amp):
            loss = loss_fn()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    return step


def frozen_to(hf, names: tuple[str, ...], dtype: torch.dtype) -> None:
    """transformers' parts ``names`` frozen and stored in ``dtype``; the vision tower as
    LAVIS freezes it (:func:`common.freeze_vision_as_lavis`)."""
    for name in names:
        part = hf.get_submodule(name)
        part.requires_grad_(False)
        part.to(dtype).eval()
    if "vision_model" in names:
        common.freeze_vision_as_lavis(hf)


def stage1(args, amp, folder: Path) -> list[str]:
    import lavis_stage1
    from lavislike.models import from_hf
    from lavislike.models.blip2 import Blip2Qformer
    from lavislike.runners.precision import cast_frozen_parts
    from stage1_step import _loss, ours_outputs, ref_outputs

    dev, sizes = args.device, common.SIZES[args.size]
    hf, tok = common.build_stage1(folder, sizes, args.seed, dev)
    ours = from_hf(str(folder), device=dev, is_eval=False)
    ours.tokenizer
    hf = hf.to(dev).train()
    frozen_to(hf, ("vision_model",), amp)
    cast_frozen_parts(ours, amp)
    # LAVIS's trainable parts: the Q-Former side of ``hf`` and its BERT LM head (decoder tied
    # to the word embeddings), with our LM head's weights
    head = lavis_stage1.lm_head_like(hf, ours.qformer.lm_head).to(dev)
    lavis = torch.nn.ModuleList([hf, head])
    temp = float(ours.temp.detach())
    bs = batch(args, 1)
    pixels = common.images(bs, sizes["vision"]["image_size"], args.seed).to(dev)
    texts = common.captions(bs)
    enc = tok(texts, padding="longest", truncation=True, max_length=32, return_tensors="pt").to(dev)
    ids, mask = enc.input_ids, enc.attention_mask
    samples = {"image": pixels, "text_input": texts, "image_id": torch.arange(bs, device=dev)}
    return measure(args, amp, 1, bs, (
        ("lavislike ITC+ITM", ours, lambda: _loss(*ours_outputs(ours, pixels, ids, mask))),
        ("transformers ITC+ITM", hf, lambda: _loss(*ref_outputs(hf, pixels, ids, mask))),
        ("lavislike full ITC+ITM+ITG", ours, lambda: Blip2Qformer.forward(ours, samples)["loss"]),
        ("LAVIS full ITC+ITM+ITG", lavis,
         lambda: lavis_stage1.stage1_losses(hf, head, ours.tokenizer, pixels, texts, temp)["loss"]),
    ), (ours.qformer, hf.qformer))


def stage2(args, amp, folder: Path) -> list[str]:
    from lavislike.models import from_hf
    from lavislike.runners.precision import cast_frozen_parts
    from stage2_step import hf_batch

    dev, sizes = args.device, common.SIZES[args.size]
    hf, tok = common.build_stage2(folder, sizes, args.seed, dev)
    ours = from_hf(str(folder), device=dev, is_eval=False)
    ours.llm.tokenizer
    hf = hf.to(dev).train()
    frozen_to(hf, ("vision_model", "language_model"), amp)
    cast_frozen_parts(ours, amp)
    bs = batch(args, 2)
    pixels = common.images(bs, sizes["vision"]["image_size"], args.seed).to(dev)
    texts = common.captions(bs)
    ids, mask = hf_batch(hf, tok, texts)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, : hf.config.num_query_tokens] = -100
    ids, mask, labels = ids.to(dev), mask.to(dev), labels.to(dev)
    return measure(args, amp, 2, bs, (
        ("lavislike LM loss", ours, lambda: ours({"image": pixels, "text_input": texts})["loss"]),
        ("transformers LM loss", hf, lambda: hf(pixel_values=pixels, input_ids=ids, attention_mask=mask,
                                                labels=labels).loss),
    ), (ours.qformer, hf.qformer))


def measure(args, amp, stage: int, bs: int, runs, qformers) -> list[str]:
    """One result line per ``(name, model, loss_fn)``: samples/s, peak memory, and the loss
    under AMP with dropout off, hard negatives from the same seed (the sides compute the same
    thing if these agree to AMP's precision). Steps run with the Q-Formers' dropout 0.1."""
    rows = []
    for name, model, fn in runs:
        common.set_dropout(0.0, *qformers)
        torch.manual_seed(args.seed)
        with torch.no_grad(), torch.autocast(args.device, dtype=amp):
            loss = fn().item()
        common.set_dropout(common.TRAIN_DROPOUT, *qformers)
        step = trainer(model, fn, amp, args.device)
        sec, peak = timed(step, args.steps, args.warmup, args.device)
        memory = f"peak {peak:6.1f} GiB" if peak is not None else "peak      - GiB"
        rows.append(f"stage {stage} {name:<28} batch {bs:4d}  {bs / sec:8.1f} samples/s  {memory}  "
                    f"(loss, dropout off: {loss:.4f})")
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument("--amp", choices=("bf16", "fp16"), default="bf16")
    parser.add_argument("--batch", type=int, default=None, help="per-GPU batch (default: LAVIS's)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: check that the script runs (with --size small), no GPU numbers")
    parser.add_argument("--size", choices=sorted(common.SIZES), default="paper",
                        help="model sizes of bench/common.py (default: the paper's)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_steps.py needs a CUDA GPU (--device cpu checks the script on the CPU)")
    amp = torch.bfloat16 if args.amp == "bf16" else torch.float16
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    with tempfile.TemporaryDirectory() as tmp:
        rows = (stage1 if args.stage == 1 else stage2)(args, amp, Path(tmp))
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"== {where}, AMP {args.amp}, size {args.size}")
    print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
