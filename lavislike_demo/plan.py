"""What the demo runs: the ``projects/blip2_tiny`` configs, their overrides, and two sizes.

The full size is the README demo (minutes on 2 CPU cores); the quick size shrinks every
config the same way (corpus, Q-Former, epochs) for the smoke test (seconds). Either way
the configs go through the ordinary loader, so the demo trains and evaluates exactly
what ``lavislike train --cfg-path projects/blip2_tiny/...`` would. ``precision``
"recommended" adds the recommended CPU configuration's run options to every config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from lavislike_demo.fit import QUICK_LM, LMSizes

PROJECT_DIR = Path(__file__).resolve().parents[1] / "projects" / "blip2_tiny"

STAGE1 = "train/pretrain_stage1.yaml"
STAGE2 = "train/pretrain_stage2.yaml"
STAGE2_T5 = "train/pretrain_stage2_t5.yaml"  # not in the demo; `prepare t5` makes its LLM
RETRIEVAL = "eval/ret_synthetic_eval.yaml"
CAPTION = "eval/caption_synthetic_eval.yaml"
VQA = "eval/vqa_synthetic_zeroshot_eval.yaml"


@dataclass(frozen=True)
class PrepSizes:
    """How long the frozen unimodal models are pre-trained, and the tiny LLMs' sizes."""

    llm: LMSizes = LMSizes(steps=1400, heads=8)  # the tiny OPT
    llm_copy_steps: int = 600  # its first steps: copying lessons only (see pretrain_tiny_opt)
    llm_pool_context: float = 0.5
    t5: LMSizes = LMSizes()  # the tiny T5 (`prepare t5`)
    vision_steps: int = 1000
    vision_batch: int = 48
    vision_lr: float = 1e-3


QUICK_PREP = PrepSizes(llm=QUICK_LM, llm_copy_steps=3, t5=QUICK_LM, vision_steps=3, vision_batch=8)
QUICK_CORPUS = {"n_train": 16, "n_val": 4, "n_test": 6}
QUICK_COMMON = ["model.qformer.num_hidden_layers=1", "model.qformer.num_query_token=4", "model.max_txt_len=24",
                "run.batch_size_eval=8", "run.progress_bar=false"]
QUICK_RUN = {
    STAGE1: ["run.max_iters=4", "run.iters_per_inner_epoch=2", "run.batch_size_train=8", "run.warmup_steps=1",
             "run.k_test=4"],
    STAGE2: ["run.max_epoch=1", "run.batch_size_train=8", "run.warmup_steps=1", "run.num_beams=1",
             "run.max_len=8"],
    RETRIEVAL: ["run.k_test=4"],
    CAPTION: ["run.num_beams=1", "run.max_len=8", "run.min_len=1"],
    VQA: ["run.num_beams=1", "run.max_len=3"],
}

# The recommended CPU configuration (README, "Speed options"): frozen parts stored in bf16 and
# bf16 autocast over the trainable ones. Only on a CPU with native bf16: elsewhere bf16 is
# emulated and slower than fp32, which then stays the recommendation.
RECOMMENDED_CPU = ["run.frozen_precision=auto", "run.amp=true"]
PRECISIONS = ("fp32", "recommended")


def precision_overrides(precision: str) -> list[str]:
    """The run options of the demo's ``--precision`` (none for fp32, the configs' own)."""
    from lavislike.common.suggest import check_choice
    from lavislike.runners.precision import cpu_has_native_bf16

    check_choice(precision, PRECISIONS, "demo precision")
    return list(RECOMMENDED_CPU) if precision == "recommended" and cpu_has_native_bf16() else []


@dataclass
class DemoPlan:
    """The configs of one demo run.

    Attributes:
        project: the folder holding ``train/`` and ``eval/`` (``projects/blip2_tiny``).
        quick: the smoke-test size.
        extra: ``a.b=c`` overrides applied to every config (after the size's and precision's).
        precision: "fp32" (the configs as they are) or "recommended" (:data:`RECOMMENDED_CPU`
            where the CPU has native bf16).
    """

    project: Path = PROJECT_DIR
    quick: bool = False
    extra: Sequence[str] = field(default_factory=tuple)
    precision: str = "fp32"

    @property
    def prep(self) -> PrepSizes:
        return QUICK_PREP if self.quick else PrepSizes()

    def path(self, rel: str) -> Path:
        return Path(self.project) / rel

    def dataset_names(self, rel: str) -> list[str]:
        from lavislike.config import read_yaml

        raw = read_yaml(self.path(rel))
        return [str(k) for k in (raw.get("datasets") or {})]

    def overrides(self, rel: str) -> list[str]:
        out: list[str] = []
        if self.quick:
            out += QUICK_COMMON + QUICK_RUN.get(rel, [])
            for name in self.dataset_names(rel):
                out += [f"datasets.{name}.{k}={v}" for k, v in QUICK_CORPUS.items()]
        return out + precision_overrides(self.precision) + list(self.extra)

    def config(self, rel: str, more: Sequence[str] = ()) -> DictConfig:
        """The loaded config of ``rel`` with this plan's overrides and ``more``."""
        from lavislike.config import load_config

        return load_config(self.path(rel), self.overrides(rel) + list(more))
