"""``captioning``: generate a caption per image, score with the COCO caption metrics."""

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lavislike.common.io import write_json_atomic
from lavislike.errors import ConfigError
from lavislike.registry import TASKS
from lavislike.tasks.base_task import BaseTask
from lavislike.tasks.caption_metrics import coco_caption_eval, gt_from_dataset, write_coco_gt

logger = logging.getLogger("lavislike")


@dataclass
class CaptionEvalConfig:
    """Run keys of caption generation and scoring (``captioning``, and the stage-2
    validation of ``image_text_pretrain``)."""

    num_beams: int = 5
    max_len: int = 30
    min_len: int = 8
    use_nucleus_sampling: bool = False
    spice: bool = False  # also needs java and the Stanford CoreNLP jar
    gt_files: dict[str, str] = field(default_factory=dict)  # split -> COCO-format ground truth
    # text the LLM continues (e.g. "a photo of"); None = the model's own ``model.prompt``.
    # It reaches the model as ``samples["prompt"]``, LAVIS's way of overriding the prompt.
    prompt: Optional[str] = None
    # beam-search rules of an LLM's generate: lavis (transformers 4.33's, as LAVIS runs) or
    # transformers (the installed generate, as its BLIP-2 port); lavislike/models/llms/beam_search.py
    beam_search: str = "lavis"


@dataclass
class CaptionTaskConfig(CaptionEvalConfig):
    """Run keys read by ``captioning``."""

    task: str = "captioning"
    report_metric: bool = True


def check_beam_search(value: str) -> None:
    """Refuse a bad ``run.beam_search`` when the task is built, not at its first evaluation."""
    # imported here: the tasks otherwise load no model code (nor transformers)
    from lavislike.models.llms.beam_search import check_beam_search as check

    check(value, "run.beam_search")


def beam_search_kwargs(cfg) -> dict:
    """``beam_search`` for ``generate`` / ``predict_answers`` only when it is not the default,
    so that a plugin model whose methods have LAVIS's signature keeps working."""
    return {} if cfg.beam_search == "lavis" else {"beam_search": cfg.beam_search}


def caption_generate_kwargs(cfg) -> dict:
    return {"use_nucleus_sampling": cfg.use_nucleus_sampling, "num_beams": cfg.num_beams,
            "max_length": cfg.max_len, "min_length": cfg.min_len, **beam_search_kwargs(cfg)}


def with_run_prompt(model, samples: dict, prompt: Optional[str]) -> dict:
    """``samples`` with ``prompt`` as ``samples["prompt"]`` (None: unchanged)."""
    if prompt is None:
        return samples
    cfg = getattr(model, "cfg", None)
    if cfg is not None and "prompt" not in cfg:
        # the Q-Former's own captioner reads no prompt: refuse rather than ignore it
        raise ConfigError(f"run.prompt: '{prompt}' is set but {type(model).__name__} generates without a "
                          "prompt; remove run.prompt (prompts need an LLM model, e.g. arch blip2_opt)")
    return {**samples, "prompt": prompt}


def caption_results(model, samples: dict, cfg) -> list[dict]:
    """``[{"image_id", "caption"}]`` for one batch, generated with ``cfg``'s settings."""
    captions = model.generate(with_run_prompt(model, samples, cfg.get("prompt")), **caption_generate_kwargs(cfg))
    ids = samples["image_id"]
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    return [{"image_id": i, "caption": c} for i, c in zip(ids, captions)]


def score_captions(results: list[dict], dataset: Any, split: str, gt_file: str | None,
                   output_dir: Path | None, spice: bool) -> dict:
    """COCO metrics for ``[{"image_id", "caption"}]``; ``agg_metrics`` = CIDEr + BLEU-4."""
    if output_dir:
        return _score_captions_in(Path(output_dir) / "result", results, dataset, split, gt_file, spice)
    with tempfile.TemporaryDirectory(prefix="lavislike_cap_") as work:
        return _score_captions_in(Path(work), results, dataset, split, gt_file, spice)


def _score_captions_in(work: Path, results: list[dict], dataset: Any, split: str, gt_file: str | None,
                       spice: bool) -> dict:
    if not gt_file:
        gts = gt_from_dataset(dataset)
        if gts is None:
            logger.info("captioning %s: no ground truth (gt_files.%s or captions in the annotation); "
                        "results written, metrics skipped", split, split)
            return {}
        gt_file = write_coco_gt(gts, work / f"{split}_coco_gt.json")
    res_file = work / f"{split}_captions.json"
    write_json_atomic(res_file, [{"image_id": r["image_id"], "caption": r["caption"]} for r in results])
    metrics = coco_caption_eval(gt_file, res_file, spice=spice)
    metrics["agg_metrics"] = metrics["CIDEr"] + metrics["Bleu_4"]
    return metrics


@TASKS.register("captioning", config=CaptionTaskConfig)
class CaptionTask(BaseTask):
    """Image captioning evaluated with BLEU / METEOR / ROUGE-L / CIDEr (/ SPICE)."""

    config_class = CaptionTaskConfig
    result_key = "image_id"

    def __init__(self, settings=None):
        super().__init__(settings)
        check_beam_search(self.cfg.beam_search)

    def valid_step(self, model, samples: dict) -> list[dict]:
        return caption_results(model, samples, self.cfg)

    def compute_metrics(self, results, dataset, split, output_dir) -> dict:
        if not self.cfg.report_metric:
            return {}
        return score_captions(results, dataset, split, self.cfg.gt_files.get(split), output_dir, self.cfg.spice)
