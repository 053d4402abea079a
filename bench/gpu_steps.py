"""Paper-size training steps on one GPU: lavislike vs transformers' BLIP-2, under AMP.

Stage 1: ViT-g (EVA-CLIP-g widths: 1408 x 39 layers, 224 px / patch 14) + the BERT-base
Q-Former (12 layers, 32 queries), the ITC + ITM step both sides can compute (as
``stage1_step.py``), plus our full ITC + ITM (hard negatives) + ITG step.
Stage 2: the same vision and Q-Former + OPT-2.7B widths (2560 x 32 layers, vocabulary
50,272), the LM loss. Batch per GPU as LAVIS's BLIP-2 configs (stage 1: 100, stage 2: 64;
``--batch`` overrides). Random weights (nothing is downloaded); the frozen parts are stored in
the AMP dtype on both sides (``run.frozen_precision``), trainable parts fp32 with fused AdamW.

Prints one line per (stage, implementation): samples/s (median of ``--steps`` steps after
``--warmup``) and peak GPU memory. Parity is checked at small size on the CPU by
``stage1_step.py`` / ``stage2_step.py``; here only the loss of the first step is printed.

Run: ``bash bench/gpu.sh`` (or ``python bench/gpu_steps.py --stage 2 --amp bf16``).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import common

PAPER = common.SIZES["paper"]
BATCH = {1: PAPER["batch"], 2: PAPER["stage2_batch"]}


def timed(step, steps: int, warmup: int) -> tuple[float, float]:
    """(median seconds per step, peak GiB) of ``step`` on the GPU."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def trainer(model, loss_fn, amp: torch.dtype):
    """A step: forward under autocast, backward, fused AdamW on the trainable parameters."""
    from lavislike.runners.optim import build_optimizer

    opt = build_optimizer(model, 1e-5, 0.05, (0.9, 0.999))
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=amp):
            loss = loss_fn()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    return step


def frozen_to(model, names: tuple[str, ...], dtype: torch.dtype) -> None:
    for name in names:
        part = model.get_submodule(name)
        part.requires_grad_(False)
        part.to(dtype).eval()


def stage1(args, amp, folder: Path) -> list[str]:
    from lavislike.models import from_hf
    from lavislike.models.blip2 import Blip2Qformer
    from lavislike.runners.precision import cast_frozen_parts
    from stage1_step import _loss, ours_outputs, ref_outputs

    hf, tok = common.build_stage1(folder, PAPER, args.seed)
    ours = from_hf(str(folder), device="cuda", is_eval=False)
    ours.tokenizer
    hf = hf.cuda().train()
    frozen_to(hf, ("vision_model",), amp)
    cast_frozen_parts(ours, amp)
    bs = args.batch or BATCH[1]
    pixels = common.images(bs, 224, args.seed).cuda()
    texts = common.captions(bs)
    enc = tok(texts, padding="longest", truncation=True, max_length=32, return_tensors="pt").to("cuda")
    ids, mask = enc.input_ids, enc.attention_mask
    samples = {"image": pixels, "text_input": texts, "image_id": torch.arange(bs, device="cuda")}
    return measure(args, amp, 1, bs, (
        ("lavislike ITC+ITM", ours, lambda: _loss(*ours_outputs(ours, pixels, ids, mask))),
        ("transformers ITC+ITM", hf, lambda: _loss(*ref_outputs(hf, pixels, ids, mask))),
        ("lavislike full ITC+ITM+ITG", ours, lambda: Blip2Qformer.forward(ours, samples)["loss"]),
    ))


def stage2(args, amp, folder: Path) -> list[str]:
    from lavislike.models import from_hf
    from lavislike.runners.precision import cast_frozen_parts
    from stage2_step import hf_batch

    hf, tok = common.build_stage2(folder, PAPER, args.seed)
    ours = from_hf(str(folder), device="cuda", is_eval=False)
    ours.llm.tokenizer
    hf = hf.cuda().train()
    frozen_to(hf, ("vision_model", "language_model"), amp)
    cast_frozen_parts(ours, amp)
    bs = args.batch or BATCH[2]
    pixels = common.images(bs, 224, args.seed).cuda()
    texts = common.captions(bs)
    ids, mask = hf_batch(hf, tok, texts)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, : hf.config.num_query_tokens] = -100
    ids, mask, labels = ids.cuda(), mask.cuda(), labels.cuda()
    return measure(args, amp, 2, bs, (
        ("lavislike LM loss", ours, lambda: ours({"image": pixels, "text_input": texts})["loss"]),
        ("transformers LM loss", hf, lambda: hf(pixel_values=pixels, input_ids=ids, attention_mask=mask,
                                                labels=labels).loss),
    ))


def measure(args, amp, stage: int, bs: int, runs) -> list[str]:
    """One result line per ``(name, model, loss_fn)``: samples/s and peak memory."""
    rows = []
    for name, model, fn in runs:
        step = trainer(model, fn, amp)
        loss = float(step())
        sec, peak = timed(step, args.steps, args.warmup)
        rows.append(f"stage {stage} {name:<28} batch {bs:4d}  {bs / sec:8.1f} samples/s  peak {peak:6.1f} GiB  "
                    f"(first loss {loss:.4f})")
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument("--amp", choices=("bf16", "fp16"), default="bf16")
    parser.add_argument("--batch", type=int, default=None, help="per-GPU batch (default: LAVIS's)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_steps.py needs a CUDA GPU")
    amp = torch.bfloat16 if args.amp == "bf16" else torch.float16
    torch.backends.cuda.matmul.allow_tf32 = True
    with tempfile.TemporaryDirectory() as tmp:
        rows = (stage1 if args.stage == 1 else stage2)(args, amp, Path(tmp))
    print(f"== {torch.cuda.get_device_name()}, AMP {args.amp}")
    print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
