"""Typed schemas for the sections of a lavislike config.

Components add their own keys: a model's registered ``config`` dataclass is the schema of
the ``model`` section, a dataset builder's of its ``datasets.<name>`` block, and the
registered task / runner / lr-scheduler dataclasses are folded into the ``run`` schema.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf


@dataclass
class ModelConfig:
    """Keys every model accepts; models subclass this with their own parts and keys."""

    arch: str = "???"
    model_type: Optional[str] = None
    load_pretrained: bool = True
    load_finetuned: bool = False
    pretrained: Optional[str] = None  # LAVIS .pth path or URL
    finetuned: Optional[str] = None
    hf_hub_id: Optional[str] = None  # Hugging Face repo id or local folder


@dataclass
class ProcessorPair:
    """``train`` / ``eval`` processor blocks, each ``{name: <registry name>, ...}``."""

    train: Optional[Any] = None
    eval: Optional[Any] = None


@dataclass
class PreprocessConfig:
    vis_processor: ProcessorPair = field(default_factory=ProcessorPair)
    text_processor: ProcessorPair = field(default_factory=ProcessorPair)


@dataclass
class RunConfig:
    """Keys of the ``run`` section shared by every task and runner.

    The selected task, runner and lr scheduler add their own keys (their registered
    config dataclasses) on top.
    """

    task: str = "image_text_pretrain"
    runner: str = "runner_base"
    lr_sched: str = "linear_warmup_cosine_lr"
    init_lr: float = 1e-4
    min_lr: float = 0.0
    warmup_lr: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    max_epoch: int = 1
    max_iters: Optional[int] = None  # runner_iter: total optimizer steps
    iters_per_inner_epoch: Optional[int] = None  # runner_iter: steps between validations
    batch_size_train: int = 8  # per process
    batch_size_eval: int = 8
    num_workers: int = 0
    accum_grad_iters: int = 1
    max_grad_norm: Optional[float] = None
    seed: int = 42
    experiment: Optional[str] = None
    output_dir: Optional[str] = None  # default: ./output/<experiment>/<timestamp>
    amp: bool = False
    amp_dtype: Optional[str] = None  # bf16 | fp16; null: the frozen parts' half dtype, else bf16 (runners/amp.py)
    resume: bool = False
    resume_ckpt_path: Optional[str] = None
    evaluate: bool = False
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    valid_splits: list[str] = field(default_factory=list)
    test_splits: list[str] = field(default_factory=list)
    device: str = "auto"
    distributed: bool = True
    world_size: int = 1
    dist_url: str = "env://"
    log_freq: int = 10
    save_freq: int = 1  # periods (epochs / inner epochs) between resumable checkpoints
    max_consecutive_nan: int = 5
    layer_decay: Optional[float] = None  # layer-wise lr decay for layered encoders; None/1 = off


TOP_LEVEL_KEYS = ("run", "model", "datasets", "imports", "preprocess")


def with_schema_defaults(section: Any, schema: type) -> DictConfig:
    """``section`` (DictConfig, mapping or None) over ``schema``'s defaults.

    Keys the schema lacks are kept, not rejected: a task or runner reads its own keys from
    a ``run`` section that also holds everyone else's.
    """
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, False)
    plain = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section or {})
    return OmegaConf.merge(base, plain)
