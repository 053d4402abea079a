"""The text the demo's frozen LLM is pre-trained on: the corpus's TRAIN annotations, no image.

Each training image contributes short "documents" about its scene, written the way stage 2
and zero-shot VQA will later show text to the LLM (the same caption / question cleaning
as the text processors, ``"\\n"`` ending every statement, ``</s>`` starting each one):

* ``{caption}\\n`` - a caption alone;
* ``{caption}\\n</s>{caption}\\n`` - the caption repeated (the easiest lesson in copying
  from the context; the demo's pre-training starts with these alone, see ``copy_steps``);
* ``{caption}\\n</s>{other caption}\\n`` - a second description of the same scene;
* ``{caption}\\n</s>Question: {q} Answer: {a}\\n`` - a question answered from the
  description before it.

(The tokenizer puts ``</s>`` in front of every document, as OPT's does.)

So the LLM learns, from text alone, to read a scene description that comes before a
``</s>`` and to describe or answer from it. In stage 2 the projected Q-Former queries take
the place of that description (the soft prompt comes before ``</s>``), which is what lets
the model answer questions zero-shot: the same mechanism BLIP-2 relies on, at toy scale.
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from lavislike.processors.text import pre_caption, pre_question

BOS = "</s>"
EOT = "\n"


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def scene_texts(annotations_dir: str | Path) -> list[dict]:
    """Per training image: ``{"captions": [...], "qa": [(question, answer), ...]}`` (cleaned)."""
    root = Path(annotations_dir)
    scenes: dict[int, dict] = defaultdict(lambda: {"captions": [], "qa": []})
    for row in _load(root / "caption_train.json"):
        scenes[row["image_id"]]["captions"].append(pre_caption(row["caption"]))
    for row in _load(root / "vqa_train.json"):
        answer = row["answer"][0] if isinstance(row["answer"], list) else row["answer"]
        scenes[row["image_id"]]["qa"].append((pre_question(row["question"]), answer))
    return [scenes[k] for k in sorted(scenes)]


def llm_documents(annotations_dir: str | Path, seed: int = 0) -> list[str]:
    """All documents of the TRAIN split (see the module docstring), in a seeded order."""
    rng = random.Random(seed)
    docs = []
    for scene in scene_texts(annotations_dir):
        caps = scene["captions"]
        for cap in caps:
            docs.append(f"{cap}{EOT}")
        # a caption repeated after the separator: the cheapest lesson in reading the context,
        # which stage 2 relies on when the soft visual prompt takes the first caption's place
        docs.append(f"{caps[0]}{EOT}{BOS}{caps[0]}{EOT}")
        if len(caps) > 1:
            docs.append(f"{caps[0]}{EOT}{BOS}{caps[1]}{EOT}")
            docs.append(f"{caps[1]}{EOT}{BOS}{caps[0]}{EOT}")
        for question, answer in scene["qa"]:
            docs.append(f"{rng.choice(caps)}{EOT}{BOS}Question: {question} Answer: {answer}{EOT}")
    rng.shuffle(docs)
    return docs
