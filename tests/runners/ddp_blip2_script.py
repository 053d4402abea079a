"""Launched by test_ddp_blip2.py (plain python, or torchrun with 2 gloo ranks): train a tiny
stage-1 ``blip2`` (ITC + ITM + ITG) or stage-2 ``blip2_opt`` through the real runner for a
few optimizer steps on generated image-caption pairs, one of them a corrupt image that the
collate drops (so one rank's batch is smaller than the other's).

Usage: ``ddp_blip2_script.py <out> <per-rank batch>``; for each stage rank 0 writes
``<out>/<stage>/final.safetensors`` (the trained weights; one process also ``initial.safetensors``)
and the runner its ``metrics.jsonl``. Then the stage-1 validation loss over 5 samples with
``batch_size_eval`` 2 (2 ranks: one runs two batches, the other one) goes to
``<out>/valid/metrics.json``.
"""
import json
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).parent))

from toy_parts import run_cfg  # noqa: E402

from lavislike.common import dist as D  # noqa: E402
from lavislike.common.checkpoint import save_weights  # noqa: E402
from lavislike.datasets.bad_data import SkippedSample  # noqa: E402
from lavislike.datasets.collate import collate  # noqa: E402
from lavislike.models import load_model  # noqa: E402
from lavislike.registry import RUNNERS  # noqa: E402
from lavislike.tasks.base_task import BaseTask  # noqa: E402
from lavislike.tasks.image_text_pretrain import ImageTextPretrainTask  # noqa: E402

CAPTIONS = [
    "a cat sitting on a red mat", "two dogs running in the park", "a man riding a horse",
    "a plate of food with rice", "a bus parked next to a building", "children playing football",
    "an old red car in the street at night", "a bird flying over the sea",
]
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
VALID_SIZE, VALID_BATCH = 5, 2


class Pairs(Dataset):
    """``n`` generated (image, caption) pairs; the samples in ``bad`` are corrupt images."""

    def __init__(self, n: int = 24, bad: tuple[int, ...] = (5,)):
        self.n, self.bad = n, set(bad)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i in self.bad:
            return SkippedSample(path=f"images/{i}.jpg", reason="corrupt image", dataset="pairs", index=i)
        image = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i))
        return {"image": image, "text_input": CAPTIONS[i % len(CAPTIONS)]}


def build(stage: str):
    torch.manual_seed(0)  # the same initial weights on every rank
    arch = "blip2" if stage == "stage1" else "blip2_opt"
    model = load_model(arch, "tiny", load_pretrained=False, qformer=NO_DROPOUT)
    with torch.no_grad():
        # BERT's init (std 0.02) leaves a tiny random Q-Former's outputs nearly the same for
        # every image and text (ITC = log 8): gradients would be all cancellation, noise
        for p in model.parameters():
            if p.requires_grad and p.dim() > 1:
                p.normal_(0.0, 0.2)
    return model


def train(out: Path, stage: str, per_rank_batch: int) -> None:
    model = build(stage)
    cfg = run_cfg(out, runner="runner_base", batch_size_train=per_rank_batch, max_epoch=1, distributed=True,
                  init_lr=1e-3, warmup_steps=0, weight_decay=0.05)
    if "WORLD_SIZE" not in os.environ:  # the single process (torchrun's ranks start alike)
        save_weights(out / "initial.safetensors", model.trainable_state_dict(), {})
    runner = RUNNERS.get("runner_base")(cfg, BaseTask(), model, {"pairs": {"train": Pairs()}}, job_id="run",
                                        collate_fn=collate, save_config=lambda c, o: None)
    runner.train()
    if D.is_main_process():
        save_weights(out / "final.safetensors", runner.unwrapped_model.trainable_state_dict(),
                     {"world": D.get_world_size()})
    D.barrier()


def valid_loss(out: Path) -> dict:
    cfg = run_cfg(out, runner="runner_base", evaluate=True, test_splits=["val"], batch_size_eval=VALID_BATCH,
                  distributed=True)
    runner = RUNNERS.get("runner_base")(cfg, ImageTextPretrainTask({"valid_metrics": ["loss"]}), build("stage1"),
                                        {"pairs": {"val": Pairs(VALID_SIZE, bad=())}}, job_id="run",
                                        collate_fn=collate, save_config=lambda c, o: None)
    metrics = runner.train()["test"]["pairs/val"]
    if D.is_main_process():
        (out / "metrics.json").write_text(json.dumps({"world": D.get_world_size(), **metrics}))
    D.barrier()
    return metrics


if __name__ == "__main__":
    out, per_rank_batch = Path(sys.argv[1]), int(sys.argv[2])
    for stage in ("stage1", "stage2"):  # one launch for all: starting processes is the slow part
        train(out / stage, stage, per_rank_batch)
    valid_loss(out / "valid")
