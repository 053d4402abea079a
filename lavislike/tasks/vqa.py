"""``vqa`` and ``gqa``: answer questions with ``model.predict_answers`` and score them."""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lavislike.common.suggest import did_you_mean
from lavislike.errors import ConfigError
from lavislike.registry import TASKS
from lavislike.tasks.base_task import BaseTask
from lavislike.tasks.captioning import beam_search_kwargs, check_beam_search
from lavislike.tasks.vqa_ground_truth import raw_ground_truth
from lavislike.tasks.vqa_metrics import VQA_METRICS, expand_answers, gqa_report, vqa_report

logger = logging.getLogger("lavislike")

INFERENCE_METHODS = ("generate", "rank")


@dataclass
class VQATaskConfig:
    """Run keys read by ``vqa`` / ``gqa``."""

    task: str = "vqa"
    num_beams: int = 5
    max_len: int = 10
    min_len: int = 1
    inference_method: str = "generate"  # generate | rank (score answer_list candidates)
    num_ans_candidates: int = 128
    answer_list: Optional[str] = None  # JSON list of candidate answers, for "rank"
    # question template, e.g. "Question: {} Short answer:"; None = the model's own
    # (model.vqa_prompt, else the paper's for its LLM); "" = the bare question, as LAVIS
    prompt: Optional[str] = None
    length_penalty: float = -1.0
    beam_search: str = "lavis"  # or transformers: as run.beam_search of captioning
    num_annotators: int = 10  # turns (answers, weights) back into raw annotator answers
    report_metric: bool = True
    # official: the current GT-Vision-Lab vqaEval.py; lavis: LAVIS's older vendored copy
    vqa_metric: str = "official"


@TASKS.register("vqa", config=VQATaskConfig)
class VQATask(BaseTask):
    """VQAv2 / OK-VQA style evaluation with the official VQA accuracy."""

    config_class = VQATaskConfig
    result_key = "question_id"

    def __init__(self, settings=None):
        super().__init__(settings)
        if self.cfg.inference_method not in INFERENCE_METHODS:
            raise ConfigError(f"run.inference_method: unknown '{self.cfg.inference_method}'; "
                              f"valid: {', '.join(INFERENCE_METHODS)}")
        if self.cfg.vqa_metric not in VQA_METRICS:
            raise ConfigError(f"run.vqa_metric: unknown '{self.cfg.vqa_metric}'; valid: {', '.join(VQA_METRICS)}"
                              f"{did_you_mean(self.cfg.vqa_metric, VQA_METRICS)}")
        check_beam_search(self.cfg.beam_search)
        self.answer_list = None
        if self.cfg.answer_list:
            path = Path(self.cfg.answer_list).expanduser()
            if not path.is_file():
                raise ConfigError(f"run.answer_list: file not found: {path}")
            self.answer_list = json.loads(path.read_text())
        elif self.cfg.inference_method == "rank":
            raise ConfigError("run.inference_method 'rank' needs run.answer_list (a JSON list of answers)")

    def answers_for(self, model, samples: dict) -> list[str]:
        return model.predict_answers(
            samples, num_beams=self.cfg.num_beams, inference_method=self.cfg.inference_method,
            max_len=self.cfg.max_len, min_len=self.cfg.min_len, num_ans_candidates=self.cfg.num_ans_candidates,
            answer_list=self.answer_list, prompt=self.cfg.prompt, length_penalty=self.cfg.length_penalty,
            **beam_search_kwargs(self.cfg))

    def valid_step(self, model, samples: dict) -> list[dict]:
        preds = self.answers_for(model, samples)
        qids = samples["question_id"]
        qids = qids.tolist() if hasattr(qids, "tolist") else list(qids)
        out = []
        for i, (qid, pred) in enumerate(zip(qids, preds)):
            row = {"question_id": qid, "answer": pred}
            if "gt_answers" in samples:
                row["gt_answers"] = list(samples["gt_answers"][i])
            elif "answers" in samples:
                # a stand-in: compute_metrics replaces it by the raw answers where it finds them
                weights = samples["weights"][i] if "weights" in samples else None
                row["gt_answers"] = expand_answers(samples["answers"][i], weights, self.cfg.num_annotators)
                row["gt_expanded"] = True
            if "answer_type" in samples:
                row["answer_type"] = samples["answer_type"][i]
            out.append(row)
        return out

    def compute_metrics(self, results, dataset, split, output_dir) -> dict:
        """VQA accuracy from each question's raw answers: the official annotation file the
        dataset names (``eval_files.vqa_annotations`` / ``anno_files``), else the dataset's
        rows (a single answer string: ``num_annotators`` unanimous annotators), else the
        batch's (answers, weights) expanded to ``num_annotators`` (approximate, flagged
        ``"approximate": true`` in the metrics)."""
        if not self.cfg.report_metric:
            return {}
        truth = raw_ground_truth(dataset, [r["question_id"] for r in results], self.cfg.num_annotators)
        scored, approximate = [], 0
        for r in results:
            gt = truth.get(str(r["question_id"])) if truth else None
            if gt is not None:
                scored.append({**r, "gt_answers": gt["answers"],
                               "answer_type": gt.get("answer_type") or r.get("answer_type")})
            elif "gt_answers" in r:
                scored.append(r)
                approximate += bool(r.get("gt_expanded"))
        if not scored:
            logger.info("vqa %s: no ground-truth answers; results written, metrics skipped", split)
            return {}
        metrics = vqa_report(scored, self.cfg.vqa_metric)
        if approximate:
            logger.warning("vqa %s: raw answers of %d questions not found (no annotation file, no dataset rows); "
                           "scored from (answers, weights) x run.num_annotators=%d: APPROXIMATE accuracy",
                           split, approximate, self.cfg.num_annotators)
            metrics["approximate"] = True
        return metrics


@dataclass
class GQATaskConfig(VQATaskConfig):
    task: str = "gqa"


@TASKS.register("gqa", config=GQATaskConfig)
class GQATask(VQATask):
    """GQA: exact match of the normalised prediction with the single ground-truth answer."""

    config_class = GQATaskConfig

    def valid_step(self, model, samples: dict) -> list[dict]:
        rows = super().valid_step(model, samples)
        for i, row in enumerate(rows):
            gt = row.pop("gt_answers", None)
            row.pop("gt_expanded", None)
            if "text_output" in samples:
                row["gt_answer"] = samples["text_output"][i]
            elif gt:
                row["gt_answer"] = max(set(gt), key=gt.count)
        return rows

    def compute_metrics(self, results, dataset, split, output_dir) -> dict:
        scored = [r for r in results if "gt_answer" in r]
        if not self.cfg.report_metric or not scored:
            return {}
        return gqa_report(scored)
