"""The training loop shared by the epoch runner (``runner_base``) and the iteration runner.

One optimizer step = ``accum_grad_iters`` micro-batches. Steps are grouped in *periods*:
an epoch of the data for ``runner_base``, ``iters_per_inner_epoch`` steps for
``runner_iter``; after each period the runner evaluates the validation splits, keeps the
best weights by the task's ``agg_metrics`` and writes a resumable checkpoint.

Training data is one corpus read in a shuffled, rank-sharded order, or several corpora
mixed per micro-batch by ``datasets.<name>.sample_ratio`` (default: the corpus size);
see :mod:`lavislike.runners.data`. The data position is part of every checkpoint.

Runners never know which model they train: they call ``task.train_step(model, samples)``
(which returns a dict with ``"loss"``), ``task.evaluate(...)`` and the model's
``trainable_state_dict()``.
"""

import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from lavislike.common import dist as D
from lavislike.common.checkpoint import (
    find_latest_checkpoint,
    is_checkpoint_folder,
    load_checkpoint,
    load_latest_checkpoint,
    load_trainable_weights,
    save_checkpoint,
    save_weights,
    trainable_state_dict,
)
from lavislike.common.io import write_json_atomic
from lavislike.common.logging import MetricsWriter, plot_curves, setup_logging
from lavislike.config.schema import RunConfig, with_schema_defaults
from lavislike.datasets.feature_cache import verify_feature_caches
from lavislike.errors import ConfigError, LavislikeError
from lavislike.registry import LR_SCHEDULERS, RUNNERS
from lavislike.runners.data import (
    MixedTrainStream,
    ShardedSampler,
    TrainStream,
    collate_fn_for,
    combine,
    default_sample_ratio,
    make_loader,
    move_to_device,
)
from lavislike.runners.distributed import (
    clip_grad_norm,
    full_params,
    gather_full,
    load_full_state,
    load_optimizer_state,
    no_grad_sync,
    sharded_grad_scaler,
    sync_replicated_grads,
    wrap_model,
)
from lavislike.runners.optim import build_optimizer
from lavislike.runners.precision import store_frozen_parts

logger = logging.getLogger("lavislike")


class NonFiniteLossError(LavislikeError, FloatingPointError):
    """The loss was NaN / inf for ``max_consecutive_nan`` optimizer steps in a row."""


@dataclass
class RunnerConfig(RunConfig):
    """Keys of ``run`` read by ``runner_base``: the shared :class:`RunConfig` keys (learning
    rates, batch sizes, splits, seed, output folder, amp, resume ...) plus these.

    The loader's run schema already holds RunConfig; the subclass gives a runner built
    directly from a plain ``run`` mapping the same defaults.
    """

    ckpt_every_steps: int = 0  # also checkpoint every N optimizer steps (0 = off)
    keep_last_checkpoints: int = 2
    find_unused_parameters: bool = False
    fsdp: bool = False
    # FSDP checkpoints are sharded (torch.distributed.checkpoint); full trainable weights
    # (model.safetensors) go into the run's last one, and into every one with this
    fsdp_full_weights: bool = False
    progress_bar: bool = True
    tensorboard: bool = True
    # model | auto | fp32 | bf16 | fp16: the dtype frozen parts are stored in (runners/precision.py);
    # the recommended CPU training configuration is frozen_precision=auto with amp=true
    frozen_precision: str = "model"


def _flatten_datasets(datasets: dict) -> dict[str, dict[str, Dataset]]:
    if datasets and all(isinstance(v, Dataset) for v in datasets.values()):
        return {"data": dict(datasets)}
    return {name: dict(splits) for name, splits in (datasets or {}).items()}


@RUNNERS.register("runner_base", config=RunnerConfig)
class RunnerBase:
    """Epoch-based runner.

    Args:
        cfg: the full config (only ``cfg.run`` is read here; saved next to the outputs).
        task: a task object (``train_step``, ``evaluate``).
        model: the model; moved to the device and wrapped (DDP / FSDP) by the runner.
        datasets: ``{dataset_name: {split: Dataset}}`` (a flat ``{split: Dataset}`` works too).
        job_id: names the output sub-folder instead of a timestamp.
        collate_fn: batch collate when a dataset has no ``collater``.
        save_config: ``fn(cfg, output_dir)`` writing the resolved config; default
            ``lavislike.config.loader.save_config``.
    """

    config_class = RunnerConfig

    def __init__(self, cfg: DictConfig, task: Any, model: torch.nn.Module, datasets: dict,
                 job_id: str | None = None, *, collate_fn: Callable | None = None,
                 save_config: Callable | None = None):
        self.cfg = cfg
        self.run = with_schema_defaults(cfg.run if "run" in cfg else cfg, self.config_class)
        self.task = task
        self._model = model
        self.datasets = _flatten_datasets(datasets)
        self.job_id = job_id
        self.collate_fn = collate_fn
        self._save_config = save_config
        self.global_step = 0
        self.period = 0
        self.best_agg: float | None = None
        self.best_step: int | None = None
        self.nan_streak = 0
        self._ready = False

    @classmethod
    def from_config(cls, cfg: DictConfig, task: Any = None, model: torch.nn.Module | None = None,
                    datasets: dict | None = None, job_id: str | None = None) -> "RunnerBase":
        """Build the runner; missing task / model / datasets are built from ``cfg``."""
        if task is None:
            from lavislike.tasks import setup_task

            task = setup_task(cfg)
        model = model if model is not None else task.build_model(cfg)
        datasets = datasets if datasets is not None else task.build_datasets(cfg)
        return cls(cfg, task, model, datasets, job_id)

    # -- setup ---------------------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        """The (possibly DDP / FSDP-wrapped) model being trained."""
        return self._wrapped if self._ready else self._model

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        return self._model

    def _resolve_output_dir(self) -> Path:
        if self.run.output_dir:
            return Path(self.run.output_dir).expanduser().resolve()
        experiment = self.run.experiment or self.run.get("task") or "default"
        base = Path.cwd() / "output" / experiment
        if self.run.resume and not self.run.resume_ckpt_path and base.is_dir():
            runs = sorted(p for p in base.iterdir() if find_latest_checkpoint(p) is not None)
            if runs:
                return runs[-1]
        return base / (self.job_id or datetime.now().strftime("%Y%m%d_%H%M%S"))

    def setup(self) -> None:
        """Process group, seeds, device, output folder, logging, model wrapping, optimizer."""
        if self._ready:
            return
        run = self.run
        if run.distributed:
            D.init_distributed_mode()
        self.device = D.resolve_device(self.run.device)
        seed = run.seed + D.get_rank()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self.output_dir = Path(D.broadcast_object(str(self._resolve_output_dir())))
        if D.is_main_process():
            self.output_dir.mkdir(parents=True, exist_ok=True)
        D.barrier()
        setup_logging(self.output_dir)
        if D.is_main_process():
            self._write_config()
        accum = run.accum_grad_iters
        if accum < 1:
            raise ConfigError(f"run.accum_grad_iters must be >= 1, got {accum}")
        self._model.to(self.device)
        # the frozen parts' storage and the autocast dtype (with run.amp_dtype null it follows them)
        self.amp_dtype = store_frozen_parts(self._model, run, self.device)
        # after every dtype decision: the cache fingerprint includes the encoder's dtype
        verify_feature_caches(self._model, self.datasets)
        self._wrapped, self.fsdp = wrap_model(self._model, self.device, fsdp=run.fsdp,
                                              find_unused_parameters=run.find_unused_parameters)
        self.scaler = self._grad_scaler()
        # built after wrapping: FSDP2 replaces the sharded parameters (same names, DTensors)
        self.optimizer = build_optimizer(self._model, run.init_lr, run.weight_decay, (run.beta1, run.beta2),
                                         run.layer_decay or 1.0) if not run.evaluate else None
        from lavislike.datasets.bad_data import BadSampleTracker, rows_report

        ds_cfgs = list(self.cfg.datasets.values()) if "datasets" in self.cfg and self.cfg.datasets else []
        self.bad_samples = BadSampleTracker.from_dataset_configs(ds_cfgs)
        for splits in self.datasets.values():  # annotation rows dropped when the data was built
            for split, ds in splits.items():
                if split in run.train_splits and not run.evaluate:
                    self.bad_samples.add_dataset(ds)  # reported now, counted in the first epoch
                elif getattr(ds, "bad_rows", None):
                    logger.warning(rows_report(ds))
        self.metrics = MetricsWriter(self.output_dir, tensorboard=run.tensorboard)
        self._ready = True
        logger.info("output folder: %s (world size %d, device %s)", self.output_dir, D.get_world_size(), self.device)

    def _grad_scaler(self):
        if self.amp_dtype != torch.float16:
            return None
        if self.fsdp:
            return sharded_grad_scaler(self.device.type)
        return torch.amp.GradScaler(self.device.type)

    def _write_config(self) -> None:
        if self._save_config is not None:
            self._save_config(self.cfg, self.output_dir)
            return
        from lavislike.config.loader import save_config

        save_config(self.cfg, self.output_dir)

    # -- data ----------------------------------------------------------------------------
    def _split(self, split: str) -> list[tuple[str, Dataset]]:
        return [(name, splits[split]) for name, splits in self.datasets.items() if split in splits]

    def train_corpora(self) -> dict[str, Dataset]:
        """``{dataset name: training dataset}``; the train splits of one corpus are combined."""
        found: dict[str, list[Dataset]] = {}
        for split in self.run.train_splits:
            for name, ds in self._split(split):
                found.setdefault(name, []).append(ds)
        if not found:
            have = sorted({s for splits in self.datasets.values() for s in splits})
            raise ConfigError(f"run.train_splits {list(self.run.train_splits)}: no dataset has these splits; "
                              f"available: {have}")
        return {name: combine(parts) for name, parts in found.items()}

    def sample_ratio(self, name: str, dataset: Dataset) -> float:
        """``datasets.<name>.sample_ratio``, else the corpus size (map-style) or 1 (stream)."""
        blocks = self.cfg.get("datasets") if isinstance(self.cfg, DictConfig) else None
        block = blocks.get(name) if blocks else None
        ratio = block.get("sample_ratio") if isinstance(block, DictConfig) else None
        if ratio is None:
            return default_sample_ratio(dataset)
        try:
            value = float(ratio)
        except (TypeError, ValueError):
            raise ConfigError(f"datasets.{name}.sample_ratio: {ratio!r} is not a number") from None
        if not value >= 0:
            raise ConfigError(f"datasets.{name}.sample_ratio: {ratio!r} must be >= 0")
        return value

    def train_stream(self) -> TrainStream | MixedTrainStream:
        """The training micro-batches: one corpus read in order, or several mixed by ratio."""
        run = self.run
        corpora = self.train_corpora()
        common = dict(batch_size=run.batch_size_train, seed=run.seed, rank=D.get_rank(),
                      world_size=D.get_world_size(), num_workers=run.num_workers,
                      pin_memory=getattr(self, "device", torch.device("cpu")).type == "cuda")
        if len(corpora) == 1:
            (dataset,) = corpora.values()
            return TrainStream(dataset, collate_fn=collate_fn_for(dataset, self.collate_fn), **common)
        mixed = MixedTrainStream([(name, ds, self.sample_ratio(name, ds)) for name, ds in corpora.items()],
                                 collate_fn=self.collate_fn, **common)
        logger.info("mixing %d training corpora, chance per step: %s", len(corpora),
                    ", ".join(f"{n} {p:.4f}" for n, p in mixed.probabilities.items()))
        return mixed

    def eval_loader(self, dataset: Dataset) -> torch.utils.data.DataLoader:
        """This rank's shard of ``dataset`` in order (every sample on exactly one rank), in
        whole batches of the one-process order (ranks may get different numbers of them)."""
        sampler = None
        if not isinstance(dataset, torch.utils.data.IterableDataset):
            sampler = ShardedSampler(len(dataset), shuffle=False, seed=0, rank=D.get_rank(),
                                     world_size=D.get_world_size(), pad=False, batch_size=self.run.batch_size_eval)
        return make_loader(dataset, batch_size=self.run.batch_size_eval, num_workers=self.run.num_workers,
                           collate_fn=collate_fn_for(dataset, self.collate_fn), sampler=sampler,
                           drop_last=False, seed=0, pin_memory=self.device.type == "cuda")

    # -- schedule ------------------------------------------------------------------------
    def plan(self, stream: TrainStream | MixedTrainStream) -> tuple[int, int]:
        """(steps per period, total steps) for an epoch-based run.

        With several corpora an epoch is as many micro-batches as one pass over each.
        """
        per_epoch = stream.batches_per_epoch()
        if per_epoch is None:
            raise ConfigError("run.runner: runner_base needs a map-style dataset (it counts epochs); "
                              "use runner: runner_iter with max_iters for streamed corpora")
        steps = per_epoch // self.run.accum_grad_iters
        if steps == 0:
            raise ConfigError(f"run.accum_grad_iters={self.run.accum_grad_iters} is larger than the "
                              f"{per_epoch} micro-batches of one epoch")
        return steps, steps * self.run.max_epoch

    def end_period(self, stream: TrainStream | MixedTrainStream) -> None:
        stream.new_epoch()  # epochs follow the data: drop the partial accumulation group

    # -- the loop ------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _micro_step(self, batch: dict, sync: bool) -> dict[str, torch.Tensor]:
        with no_grad_sync(self.model, self.fsdp, sync):
            with self._autocast():
                out = self.task.train_step(self.model, batch)
            if "loss" not in out:
                raise LavislikeError(f"train_step returned no 'loss' (keys: {sorted(out)})")
            loss = out["loss"] / self.run.accum_grad_iters
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return {k: v.detach().float() for k, v in out.items()
                if isinstance(v, torch.Tensor) and v.ndim == 0 and k.startswith("loss")}

    def train_step(self, stream: TrainStream | MixedTrainStream, step: int) -> dict[str, float] | None:
        """One optimizer step; returns the logged values, or None when it was skipped."""
        lr = self.scheduler.step(step)
        self.optimizer.zero_grad(set_to_none=True)
        accum = self.run.accum_grad_iters
        parts: dict[str, torch.Tensor] = {}
        n_samples = 0
        for i in range(accum):
            batch = stream.next()
            while not self.bad_samples.consume(batch):  # a batch of only unreadable samples
                batch = stream.retry()  # same corpus: the per-step choice stays in step across ranks
            batch = move_to_device(batch, self.device)
            n_samples += _batch_len(batch)
            for k, v in self._micro_step(batch, sync=i == accum - 1).items():
                parts[k] = parts.get(k, 0.0) + v / accum
        # one collective: the global losses (the mean of the ranks' losses, which the models
        # scale so that it is the loss of the global batch), the global sample count, and
        # whether any rank's loss is non-finite (then the sum is too: every rank skips)
        names = sorted(parts)
        local = torch.stack([parts[k].to(self.device, torch.float64) for k in names]
                            + [torch.tensor(float(n_samples), dtype=torch.float64, device=self.device)])
        summed = D.all_reduce_sum(local).tolist()
        world = D.get_world_size()
        values: dict[str, float] = {k: v / world for k, v in zip(names, summed)}
        if not math.isfinite(values["loss"]):
            self.optimizer.zero_grad(set_to_none=True)
            self.nan_streak += 1
            logger.warning("step %d: non-finite loss (%s on this rank) on some rank; step skipped (%d in a row)",
                           step, parts["loss"].item(), self.nan_streak)
            self.metrics.log("train", step, {"skipped_nonfinite": 1})
            if self.nan_streak >= self.run.max_consecutive_nan:
                raise NonFiniteLossError(
                    f"loss was NaN/inf for {self.nan_streak} steps in a row (run.max_consecutive_nan="
                    f"{self.run.max_consecutive_nan}) at step {step}; lower run.init_lr, enable "
                    f"run.max_grad_norm or check the data")
            return None
        self.nan_streak = 0
        if self.fsdp:
            sync_replicated_grads(self._model)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.run.max_grad_norm:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            clip_grad_norm(params, self.run.max_grad_norm, self.fsdp)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        values["lr"] = lr
        values["samples"] = int(summed[-1])
        return values

    def train(self) -> dict:
        """Train (or only evaluate with ``run.evaluate``); returns a summary dict."""
        self.setup()
        if self.run.evaluate:
            return {"test": self.evaluate_splits(self.run.test_splits or self.run.valid_splits, "test"),
                    "output_dir": str(self.output_dir)}
        run = self.run
        stream = self.train_stream()
        self.steps_per_period, self.total_steps = self.plan(stream)
        sched_cls = LR_SCHEDULERS.get(run.lr_sched)
        self.scheduler = sched_cls.from_config(run, self.optimizer, self.total_steps, self.steps_per_period)
        self._maybe_resume(stream)
        logger.info("training %d steps (%d per %s), accum %d, per-rank batch %d",
                    self.total_steps, self.steps_per_period, self.period_name, run.accum_grad_iters,
                    run.batch_size_train)
        self.model.train()
        while self.global_step < self.total_steps:
            self._train_period(stream)
        test = {}
        if run.test_splits:
            best = self.output_dir / "model_best.safetensors"
            if best.is_file():
                load_trainable_weights(self.unwrapped_model, best, self.load_full_fn())
            test = self.evaluate_splits(run.test_splits, "test")
        self.metrics.close()
        if D.is_main_process():
            png = plot_curves(self.metrics.path, self.output_dir / "curves.png")
            if png:
                logger.info("loss / lr curves: %s", png)
        D.barrier()
        return {"best_agg_metrics": self.best_agg, "best_step": self.best_step, "test": test,
                "global_step": self.global_step, "output_dir": str(self.output_dir)}

    period_name = "epoch"

    def _train_period(self, stream: TrainStream | MixedTrainStream) -> None:
        from tqdm.auto import tqdm

        run = self.run
        end = min(self.total_steps, (self.period + 1) * self.steps_per_period)
        bar = tqdm(total=end - self.period * self.steps_per_period, initial=self.global_step - self.period *
                   self.steps_per_period, desc=f"{self.period_name} {self.period}", dynamic_ncols=True,
                   disable=not (D.is_main_process() and run.progress_bar), leave=False)
        window: dict[str, list[float]] = {}
        t0, samples = time.perf_counter(), 0
        while self.global_step < end:
            values = self.train_step(stream, self.global_step)
            self.global_step += 1
            bar.update(1)
            if values is not None:
                samples += values.pop("samples")
                for k, v in values.items():
                    window.setdefault(k, []).append(v)
                rate = samples / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", sps=f"{rate:.1f}")
            if window and (self.global_step % run.log_freq == 0 or self.global_step == end):
                logged = {k: sum(v) / len(v) for k, v in window.items()}
                logged["lr"] = window["lr"][-1]
                logged["samples_per_s"] = samples / max(time.perf_counter() - t0, 1e-9)
                self.metrics.log("train", self.global_step, logged, epoch=self.period)
                window, t0, samples = {}, time.perf_counter(), 0
            if run.ckpt_every_steps and self.global_step % run.ckpt_every_steps == 0 and self.global_step < end:
                self.save_checkpoint(stream)
        bar.close()
        self.bad_samples.end_epoch()
        self.end_period(stream)
        self.period += 1
        if run.valid_splits:
            metrics = self.evaluate_splits(run.valid_splits, "valid")
            aggs = [m["agg_metrics"] for m in metrics.values() if "agg_metrics" in m]
            if aggs:
                self._maybe_keep_best(sum(aggs) / len(aggs))
        if self.period % max(1, run.save_freq) == 0 or self.global_step >= self.total_steps:
            self.save_checkpoint(stream)

    # -- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_splits(self, splits: list[str], kind: str) -> dict[str, dict]:
        """Evaluate every dataset that has one of ``splits``; metrics keyed ``name/split``."""
        results = {}
        model = self.unwrapped_model
        model.eval()
        for split in splits:
            pairs = self._split(split)
            if not pairs:
                logger.warning("%s split '%s' is in no dataset; skipped", kind, split)
            for name, ds in pairs:
                with full_params(self.model, self.fsdp), self._autocast():
                    metrics = self.task.evaluate(model, self.eval_loader(ds), split=split, epoch=self.period,
                                                 output_dir=self.output_dir)
                key = f"{name}/{split}" if name != "data" else split
                results[key] = metrics
                numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
                self.metrics.log(key, self.global_step, numeric, epoch=self.period)
                logger.info("%s %s: %s", kind, key, {k: round(v, 4) for k, v in numeric.items()})
        model.train()
        return results

    def _maybe_keep_best(self, agg: float) -> None:
        if self.best_agg is not None and agg <= self.best_agg:
            return
        self.best_agg, self.best_step = agg, self.global_step
        state = self.model_state()
        if D.is_main_process():
            save_weights(self.output_dir / "model_best.safetensors", state, {"global_step": self.global_step})
            write_json_atomic(self.output_dir / "best.json", {"agg_metrics": agg, "global_step": self.global_step,
                                                              "period": self.period})
            logger.info("new best agg_metrics %.4f at step %d", agg, self.global_step)
        D.barrier()

    # -- checkpoints ---------------------------------------------------------------------
    def model_state(self) -> dict[str, torch.Tensor]:
        """The trainable weights whole; under FSDP every rank takes part in gathering them
        and only the main process keeps them (the others get ``{}``: only it writes)."""
        state = trainable_state_dict(self.unwrapped_model)
        return gather_full(state, keep=D.is_main_process()) if self.fsdp else state

    def load_full_fn(self) -> Callable[[dict], None] | None:
        """How whole weights enter the model: None (``load_state_dict``), or, under FSDP,
        each rank keeping its shard of them."""
        return (lambda state: load_full_state(self.model, state)) if self.fsdp else None

    def save_checkpoint(self, stream: TrainStream | MixedTrainStream) -> Path:
        train_state = {"scheduler": self.scheduler.state_dict(),
                       "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                       "data": stream.state_dict()}
        meta = {**stream.position(), "period": self.period, "best_agg_metrics": self.best_agg,
                "best_step": self.best_step, "nan_streak": self.nan_streak, "runner": self.run.runner}
        write_shards = None
        if self.fsdp:  # each rank writes its shards of weights and optimizer state; nobody gathers them
            from lavislike.common.sharded_checkpoint import save_sharded

            write_shards = partial(save_sharded, model=self.model, optimizer=self.optimizer,
                                   keys=set(trainable_state_dict(self.unwrapped_model)))
            full = self.run.fsdp_full_weights or self.global_step >= self.total_steps
        else:
            train_state["optimizer"] = self.optimizer.state_dict()
            full = True
        return save_checkpoint(self.output_dir, self.global_step, model_state=self.model_state() if full else None,
                               train_state=train_state, meta=meta, keep_last=self.run.keep_last_checkpoints,
                               write_shards=write_shards)

    def _load_shards(self, folder: Path, train_state: dict) -> None:
        """Weights and optimizer state of a sharded checkpoint, resharded to this run's ranks."""
        from lavislike.common.sharded_checkpoint import load_sharded

        load_sharded(folder, self.model, self.optimizer, set(trainable_state_dict(self.unwrapped_model)),
                     train_state["optimizer"])

    def _maybe_resume(self, stream: TrainStream | MixedTrainStream) -> None:
        run = self.run
        path = Path(run.resume_ckpt_path).expanduser() if run.resume_ckpt_path else None
        if path is not None and is_checkpoint_folder(path):  # this checkpoint and no other
            train_state, meta = load_checkpoint(path, self.unwrapped_model, self.load_full_fn(), self._load_shards)
        elif path is not None or run.resume:
            # the newest checkpoint that reads back whole; damaged newer ones are named and skipped
            found = load_latest_checkpoint(path or self.output_dir, self.unwrapped_model, self.load_full_fn(),
                                           self._load_shards)
            if found is None and path is not None:
                raise ConfigError(f"run.resume_ckpt_path: no checkpoint in {path}")
            if found is None:
                logger.info("resume: no checkpoint in %s yet; starting from scratch", self.output_dir)
                return
            _, train_state, meta = found
        else:
            return
        if not meta.get("sharded"):  # a sharded checkpoint's optimizer state came with its weights
            load_optimizer_state(self.model, self.optimizer, train_state["optimizer"], self.fsdp)
        self.scheduler.load_state_dict(train_state["scheduler"])
        if self.scaler is not None and train_state.get("scaler"):
            self.scaler.load_state_dict(train_state["scaler"])
        self.global_step = int(meta["global_step"])
        self.period = int(meta["period"])
        self.best_agg, self.best_step = meta.get("best_agg_metrics"), meta.get("best_step")
        self.nan_streak = int(meta.get("nan_streak", 0))
        # older checkpoints kept the (single-corpus) data position only in meta.json
        stream.load_state_dict(train_state.get("data") or meta)


def _batch_len(batch: Any) -> int:
    if isinstance(batch, dict):
        for v in batch.values():
            if hasattr(v, "shape") and getattr(v, "ndim", 0) > 0:
                return int(v.shape[0])
            if isinstance(v, list):
                return len(v)
    return 0
