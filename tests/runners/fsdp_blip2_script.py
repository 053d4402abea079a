"""Launched by test_fsdp_blip2.py (plain python, or torchrun with 2 gloo ranks and
``run.fsdp: true``): train a tiny stage-1 ``blip2`` and stage-2 ``blip2_opt`` through the
real runner (the data and models of ``ddp_blip2_script.py``), evaluate a validation split
that the ranks share unevenly (stage 1: ITM scores through ``QFormer.cross_kv``; stage 2:
greedy captions; rank 0 holds 2 eval batches, rank 1 one, so forwards may not gather), then (2 ranks)
resume from the step-2 (sharded) checkpoint in a fresh runner and train step 3 again.

Usage: ``fsdp_blip2_script.py <out> <per-rank batch>``; per stage rank 0 writes
``<out>/<stage>/final.safetensors`` (and ``resumed/final.safetensors``), the runner its
``metrics.jsonl`` and ``result/val_epoch1.json``.
"""
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).parent))

from ddp_blip2_script import CAPTIONS, NO_DROPOUT, Pairs  # noqa: E402
from toy_parts import run_cfg  # noqa: E402

from lavislike.common import dist as D  # noqa: E402
from lavislike.common.checkpoint import save_weights  # noqa: E402
from lavislike.datasets.collate import collate  # noqa: E402
from lavislike.models import load_model  # noqa: E402
from lavislike.registry import RUNNERS  # noqa: E402
from lavislike.tasks.base_task import BaseTask  # noqa: E402


class Valid(Dataset):
    """5 generated pairs: 2 ranks with eval batch 2 hold 2 batches and 1 batch."""

    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int):
        image = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(100 + i))
        return {"image": image, "text_input": CAPTIONS[(3 * i) % len(CAPTIONS)], "instance_id": i}


class ScoreTask(BaseTask):
    """Validation: ITM score of each pair (stage 1) or a greedy caption (stage 2)."""

    def valid_step(self, model, samples):
        ids = [int(i) for i in samples["instance_id"]]
        if hasattr(model, "itm_scores"):
            embeds = model.encode_image(samples["image"])
            input_ids, mask = model.tokenize(list(samples["text_input"]))
            scores = model.itm_scores(embeds, input_ids, mask, image_index=torch.arange(len(ids)))
            return [{"id": i, "score": float(s)} for i, s in zip(ids, scores)]
        captions = model.generate({"image": samples["image"]}, num_beams=1, max_length=6)
        return [{"id": i, "caption": c} for i, c in zip(ids, captions)]


def build(stage: str):
    """Stage 1 with FSDP's own use case: the ViT trains too (its blocks are sharded as
    well), with activation checkpointing in the ViT and the Q-Former."""
    torch.manual_seed(0)  # the same initial weights on every rank
    if stage == "stage1":
        model = load_model("blip2", "tiny", load_pretrained=False,
                           qformer={**NO_DROPOUT, "gradient_checkpointing": True},
                           image_encoder={"freeze": False, "use_grad_checkpoint": True})
    else:
        model = load_model("blip2_opt", "tiny", load_pretrained=False, qformer=NO_DROPOUT)
    with torch.no_grad():
        # a tiny random Q-Former at BERT's init (std 0.02) gives every pair nearly the same
        # features: gradients would be all cancellation (see ddp_blip2_script.py)
        for name, p in model.named_parameters():
            if name.startswith("qformer.") and p.requires_grad and p.dim() > 1:
                p.normal_(0.0, 0.2)
    return model


def run(out: Path, stage: str, per_rank_batch: int, **extra):
    model = build(stage)
    cfg = run_cfg(out, runner="runner_base", batch_size_train=per_rank_batch, max_epoch=1, distributed=True,
                  init_lr=1e-3, warmup_steps=0, weight_decay=0.05, max_grad_norm=1.0, fsdp=True,
                  batch_size_eval=2, valid_splits=["val"], ckpt_every_steps=1, keep_last_checkpoints=5,
                  accum_grad_iters=2, **extra)
    datasets = {"pairs": {"train": Pairs(48), "val": Valid()}}  # 3 steps of 2 micro-batches
    runner = RUNNERS.get("runner_base")(cfg, ScoreTask(), model, datasets, job_id="run",
                                        collate_fn=collate, save_config=lambda c, o: None)
    runner.train()
    state = runner.model_state()  # every rank: gathering sharded weights is a collective
    if D.is_main_process():
        save_weights(out / "final.safetensors", state, {"world": D.get_world_size(), "fsdp": runner.fsdp})
    D.barrier()


if __name__ == "__main__":
    out, per_rank_batch = Path(sys.argv[1]), int(sys.argv[2])
    for stage in ("stage1", "stage2"):  # one launch for both: starting processes is the slow part
        run(out / stage, stage, per_rank_batch)
        if "WORLD_SIZE" in os.environ:
            ckpt = out / stage / "checkpoints" / f"step_{2:09d}"
            run(out / stage / "resumed", stage, per_rank_batch, resume_ckpt_path=str(ckpt))
