"""What every task shares: building the model and datasets, the train step, and sharded
evaluation (each rank runs its shard, results are gathered once, metrics computed on
rank 0 and broadcast)."""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from lavislike.common import dist as D
from lavislike.common.io import write_json_atomic
from lavislike.config.schema import with_schema_defaults
from lavislike.errors import ConfigError
from lavislike.registry import DATASETS, TASKS

logger = logging.getLogger("lavislike")


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@dataclass
class BaseTaskConfig:
    task: str = "base"


class BaseTask:
    """Base class of the registered tasks.

    Subclasses implement :meth:`valid_step` (one batch -> list of result dicts) and
    :meth:`compute_metrics` (all results -> metrics with ``agg_metrics``), or override
    :meth:`evaluate` altogether (retrieval).
    """

    config_class: type = BaseTaskConfig
    result_key: str | None = None  # results are de-duplicated on this key after gathering

    def __init__(self, settings: DictConfig | None = None):
        self.cfg = with_schema_defaults(settings, self.config_class)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "BaseTask":
        """``cfg``: the full config (its ``run`` block is read) or the ``run`` block itself."""
        return cls(cfg.run if "run" in cfg else cfg)

    # -- building ----------------------------------------------------------------------
    def build_model(self, cfg: DictConfig) -> torch.nn.Module:
        if "model" not in cfg or cfg.model is None:
            raise ConfigError("config has no 'model' section; add model.arch (see `lavislike zoo`)")
        from lavislike.models.loading import load_model_from_config

        # the weights the config names (model.pretrained / finetuned), not a random model
        return load_model_from_config(cfg.model)

    def build_datasets(self, cfg: DictConfig) -> dict[str, dict]:
        """``{dataset name: {split: Dataset}}`` from the ``datasets`` section's builders."""
        if "datasets" not in cfg or not cfg.datasets:
            raise ConfigError("config has no 'datasets' section; name at least one dataset builder")
        out = {}
        for name, ds_cfg in cfg.datasets.items():
            builder = DATASETS.get(str(name)).from_config(ds_cfg)
            out[str(name)] = builder.build_datasets()
        return out

    # -- training ----------------------------------------------------------------------
    def train_step(self, model: torch.nn.Module, samples: dict) -> dict:
        out = model(samples)
        return out if isinstance(out, dict) else {"loss": out}

    # -- evaluation --------------------------------------------------------------------
    def valid_step(self, model: torch.nn.Module, samples: dict) -> list[dict]:
        return []

    def compute_metrics(self, results: list[dict], dataset: Any, split: str, output_dir: Path | None) -> dict:
        return {}

    def evaluation(self, model: torch.nn.Module, data_loader) -> list[dict]:
        """This rank's results over its shard of ``data_loader``."""
        device = model_device(model)
        results, skipped = [], 0
        for batch in data_loader:
            skipped += len(batch.pop("bad_samples", []))
            if not batch:
                continue
            results.extend(self.valid_step(model, to_device(batch, device)))
        if skipped:
            logger.warning("evaluation skipped %d unreadable samples", skipped)
        return results

    def gather_results(self, results: list[dict]) -> list[dict]:
        """All ranks' results in one list (duplicates on ``result_key`` dropped)."""
        merged = [r for part in D.all_gather_object(results) for r in part]
        if self.result_key is None:
            return merged
        seen, out = set(), []
        for r in merged:
            key = r[self.result_key]
            if key not in seen:
                seen.add(key)
                out.append(r)
        return out

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, data_loader, *, split: str, epoch: int | None = None,
                 output_dir: str | Path | None = None) -> dict:
        """Run, gather, score; the same metrics dict is returned on every rank."""
        results = self.gather_results(self.evaluation(model, data_loader))
        metrics = None
        if D.is_main_process():
            if output_dir is not None:
                name = f"{split}_epoch{epoch}.json" if epoch is not None else f"{split}.json"
                write_json_atomic(Path(output_dir) / "result" / name, results)
            metrics = self.compute_metrics(results, data_loader.dataset, split,
                                           Path(output_dir) if output_dir else None)
            if output_dir is not None:
                with open(Path(output_dir) / "evaluate.txt", "a") as fh:
                    fh.write(json.dumps({"split": split, "epoch": epoch, **metrics}) + "\n")
        return D.broadcast_object(metrics)


def setup_task(cfg: DictConfig) -> BaseTask:
    """The task named by ``cfg.run.task``."""
    return TASKS.get(str(cfg.run.task)).from_config(cfg)
