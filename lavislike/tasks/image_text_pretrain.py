"""``image_text_pretrain``: BLIP-2 stage 1 and stage 2 pre-training.

Training is the model's own loss. Validation is optional and picks what fits each
validation dataset (``valid_metrics: [auto]``): zero-shot retrieval recall when the
dataset is a retrieval eval set and the model has the retrieval methods (stage 1),
caption metrics when the dataset is a caption eval set and the model can ``generate``
(stage 2), and the mean validation loss otherwise.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lavislike.common import dist as D
from lavislike.errors import ConfigError
from lavislike.registry import TASKS
from lavislike.tasks.base_task import BaseTask, model_device, to_device
from lavislike.tasks.captioning import CaptionEvalConfig, caption_results, check_beam_search, score_captions
from lavislike.tasks.retrieval import (
    RetrievalEvalConfig,
    check_fusion,
    retrieval_evaluate,
    supports_retrieval,
)

logger = logging.getLogger("lavislike")

VALID_METRICS = ("auto", "loss", "retrieval", "caption")


@dataclass
class PretrainTaskConfig(RetrievalEvalConfig, CaptionEvalConfig):
    """Run keys read by ``image_text_pretrain``: zero-shot retrieval (stage 1) and caption
    (stage 2) validation settings, plus these."""

    task: str = "image_text_pretrain"
    valid_metrics: list[str] = field(default_factory=lambda: ["auto"])  # auto | loss | retrieval | caption


@TASKS.register("image_text_pretrain", config=PretrainTaskConfig)
class ImageTextPretrainTask(BaseTask):
    config_class = PretrainTaskConfig

    def __init__(self, settings=None):
        super().__init__(settings)
        bad = [m for m in self.cfg.valid_metrics if m not in VALID_METRICS]
        if bad:
            raise ConfigError(f"run.valid_metrics: unknown {bad}; valid: {', '.join(VALID_METRICS)}")
        check_fusion(self.cfg.fusion)
        check_beam_search(self.cfg.beam_search)

    def _kinds(self, model, dataset) -> list[str]:
        wanted = list(self.cfg.valid_metrics)
        is_retrieval = all(hasattr(dataset, a) for a in ("text", "txt2img", "img2txt"))
        if "auto" in wanted:
            if is_retrieval and supports_retrieval(model):
                return ["retrieval"]
            if hasattr(model, "generate") and not is_retrieval and getattr(dataset, "annotation", None) \
                    and "caption" in dataset.annotation[0] and "text_input" not in _first_keys(dataset):
                return ["caption"]
            return ["loss"]
        return wanted

    @torch.no_grad()
    def evaluate(self, model, data_loader, *, split: str, epoch: int | None = None,
                 output_dir: str | Path | None = None) -> dict:
        metrics: dict = {}
        kinds = self._kinds(model, data_loader.dataset)
        for kind in kinds:
            if kind == "retrieval":
                metrics.update(retrieval_evaluate(model, data_loader, self.cfg, split=split, epoch=epoch,
                                                  output_dir=output_dir))
            elif kind == "caption":
                metrics.update(self._caption(model, data_loader, split, output_dir))
            else:
                metrics.update(self._loss(model, data_loader))
        # retrieval recall, else caption score, else lower loss is better
        for key in ("r_mean", "caption_agg"):
            if key in metrics:
                metrics["agg_metrics"] = metrics[key]
                break
        else:
            if "loss" in metrics:
                metrics["agg_metrics"] = -metrics["loss"]
        metrics.pop("caption_agg", None)
        return metrics

    def _loss(self, model, data_loader) -> dict:
        """The mean over the split's samples of the batch losses (each weighted by its size).

        Each rank computes its batches as one process does (``rank_local``: no collective in
        the models' losses, whose in-batch negatives then are the batch's own), so ranks with
        different numbers of batches do not hang, and the sums meet in one gather at the end:
        the value one process gets with the same ``batch_size_eval``.
        """
        device = model_device(model)
        sums: dict[str, float] = {}
        count = 0
        for batch in data_loader:
            batch.pop("bad_samples", None)
            if not batch:
                continue
            with D.rank_local():
                out = model(to_device(batch, device))
            n = _batch_size(batch)
            for k, v in out.items():
                if k.startswith("loss") and isinstance(v, torch.Tensor) and v.ndim == 0:
                    sums[k] = sums.get(k, 0.0) + float(v) * n
            count += n
        parts = D.all_gather_object((sums, count))
        total = sum(c for _, c in parts)
        keys = {k for s, _ in parts for k in s}
        return {k: sum(s.get(k, 0.0) for s, _ in parts) / max(total, 1) for k in keys}

    def _caption(self, model, data_loader, split, output_dir) -> dict:
        device = model_device(model)
        results = []
        for batch in data_loader:
            batch.pop("bad_samples", None)
            results += caption_results(model, to_device(batch, device), self.cfg)
        merged = {r["image_id"]: r for part in D.all_gather_object(results) for r in part}
        metrics = None
        if D.is_main_process():
            metrics = score_captions(list(merged.values()), data_loader.dataset, split,
                                     self.cfg.gt_files.get(split), Path(output_dir) if output_dir else None,
                                     self.cfg.spice)
            if "agg_metrics" in metrics:
                metrics["caption_agg"] = metrics.pop("agg_metrics")
        return D.broadcast_object(metrics)


def _first_keys(dataset) -> set:
    try:
        item = dataset[0]
    except Exception:  # an unreadable first sample: decide from the annotation alone
        return set()
    return set(item) if isinstance(item, dict) else set()


def _batch_size(batch: dict) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return int(v.shape[0])
        if isinstance(v, list):
            return len(v)
    return 0
