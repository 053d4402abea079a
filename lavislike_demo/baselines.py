"""What each demo number is compared with: a blind model, the majority answer, chance.

* ``demo_blank_image`` - an image processor that replaces every image by a blank (the
  normalised mean colour, i.e. zeros): the *same* trained model evaluated through the
  same task sees no picture. Registered here; configs name it after
  ``imports: [lavislike_demo.baselines]``.
* :func:`majority_vqa_accuracy` - answer every test question with the most frequent
  training answer of its question type (colour, shape, count, position, yes/no).
* :func:`retrieval_chance` - recall@K of a random ranking, ``K / N``.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from lavislike.registry import PROCESSORS

BLANK_PROCESSOR = "demo_blank_image"


@dataclass
class BlankImageConfig:
    name: str = BLANK_PROCESSOR
    image_size: int = 224


@PROCESSORS.register(BLANK_PROCESSOR, config=BlankImageConfig)
class BlankImage:
    """Any image -> a blank (3, size, size) tensor: zeros, the mean colour after normalisation."""

    def __init__(self, image_size: int = 224):
        self.image_size = int(image_size)

    @classmethod
    def from_config(cls, cfg) -> "BlankImage":
        return cls(cfg.get("image_size", 224))

    def __call__(self, image) -> torch.Tensor:
        return torch.zeros(3, self.image_size, self.image_size)

    def __repr__(self) -> str:
        return f"BlankImage(image_size={self.image_size})"


def majority_answers(train_rows: list[dict]) -> dict[str, str]:
    """Question type -> its most frequent training answer."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in train_rows:
        answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
        counts[row["question_type"]][answers[0]] += 1
    return {qtype: c.most_common(1)[0][0] for qtype, c in counts.items()}


def majority_vqa_accuracy(annotations_dir: str | Path, split: str = "test") -> float:
    """VQA accuracy (percent, official metric) of the majority-answer-per-type baseline."""
    from lavislike.tasks.vqa_metrics import vqa_accuracy

    root = Path(annotations_dir)
    majority = majority_answers(json.loads((root / "vqa_train.json").read_text()))
    rows = json.loads((root / f"vqa_{split}.json").read_text())
    scores = [vqa_accuracy(majority.get(r["question_type"], "yes"), list(r["answer"])) for r in rows]
    return 100.0 * sum(scores) / max(len(scores), 1)


def retrieval_chance(k: int, n: int) -> float:
    """Recall@K (percent) of a random ranking of ``n`` candidates with one match."""
    return 100.0 * min(k, n) / n
