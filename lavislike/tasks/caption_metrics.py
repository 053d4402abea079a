"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE) through pycocoevalcap.

Ground truth is COCO-format JSON read with ``pycocotools.coco.COCO`` and results are
attached with ``loadRes``, exactly as ``COCOEvalCap`` does. The scorers that need Java
(the PTB tokenizer, METEOR, SPICE) run only when ``java`` is on PATH; without it captions
are tokenised by :func:`simple_ptb_tokenize` and METEOR / SPICE are left out. The scores
are then not the official ones (BLEU / CIDEr move with the tokenisation): a WARNING goes to
the log and the metrics carry ``"approximate": true`` (so do the metrics file and
``evaluate.txt``). SPICE also needs the Stanford CoreNLP jar next to pycocoevalcap's SPICE
(pycocoevalcap would otherwise download it); without the jar it is skipped too.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from lavislike.common.io import write_json_atomic

logger = logging.getLogger("lavislike")

# what pycocoevalcap's PTBTokenizer drops after tokenising
_PUNCT = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_SPLIT = re.compile(r"(\.\.\.|--|[.?!,:;`'\"()\[\]{}-])")


APPROXIMATE_WARNING = (
    "caption metrics are APPROXIMATE: java is not on PATH, so a built-in stand-in replaces the PTB tokenizer "
    "(BLEU / ROUGE-L / CIDEr differ from the official values) and METEOR / SPICE are skipped; install a Java "
    "runtime for the official scores (metrics marked \"approximate\": true)")


def java_available() -> bool:
    return shutil.which("java") is not None


def spice_available() -> bool:
    if not java_available():
        return False
    import pycocoevalcap.spice as spice

    return any((Path(spice.__file__).parent / "lib").glob("stanford-corenlp-*.jar"))


def simple_ptb_tokenize(captions: dict[Any, list[str]]) -> dict[Any, list[str]]:
    """Lower-case, split off punctuation and drop it (a Java-free PTBTokenizer stand-in)."""
    out = {}
    for key, caps in captions.items():
        toks = []
        for cap in caps:
            words = _SPLIT.sub(r" \1 ", cap.replace("\n", " ").lower()).split()
            toks.append(" ".join(w for w in words if w not in _PUNCT))
        out[key] = toks
    return out


def write_coco_gt(gts: dict[Any, list[str]], path: str | Path) -> Path:
    """Write ``{image_id: [captions]}`` as a COCO-format caption annotation file."""
    images = [{"id": img_id} for img_id in gts]
    anns, ann_id = [], 0
    for img_id, caps in gts.items():
        for cap in caps:
            anns.append({"image_id": img_id, "id": ann_id, "caption": cap})
            ann_id += 1
    write_json_atomic(path, {"images": images, "annotations": anns, "type": "captions",
                             "info": {}, "licenses": []})
    return Path(path)


def coco_caption_eval(gt_file: str | Path, results_file: str | Path, spice: bool = False) -> dict[str, float]:
    """Score a results file (``[{"image_id", "caption"}]``) against a COCO ground-truth file.

    Returns:
        ``{"Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr", ["SPICE"]}`` (pycocoevalcap names);
        without java also ``"approximate": True`` (no METEOR / SPICE).
    """
    import contextlib
    import io

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco = COCO(str(gt_file))
        coco_res = coco.loadRes(str(results_file))
    img_ids = coco_res.getImgIds()
    gts = {i: [a["caption"] for a in coco.imgToAnns[i]] for i in img_ids}
    res = {i: [a["caption"] for a in coco_res.imgToAnns[i]] for i in img_ids}

    java = java_available()
    if java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tok = PTBTokenizer()
        gts = tok.tokenize({i: [{"caption": c} for c in caps] for i, caps in gts.items()})
        res = tok.tokenize({i: [{"caption": c} for c in caps] for i, caps in res.items()})
    else:
        logger.warning(APPROXIMATE_WARNING)
        gts, res = simple_ptb_tokenize(gts), simple_ptb_tokenize(res)

    scorers: list[tuple[Any, Any]] = [(Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"])]
    if java:
        try:
            from pycocoevalcap.meteor.meteor import Meteor

            scorers.append((Meteor(), "METEOR"))
        except Exception as exc:  # the METEOR jar failed to start (memory, JVM)
            logger.warning("METEOR skipped: %s", exc)
    scorers += [(Rouge(), "ROUGE_L"), (Cider(), "CIDEr")]
    if spice:
        if spice_available():
            from pycocoevalcap.spice.spice import Spice

            scorers.append((Spice(), "SPICE"))
        else:
            logger.info("SPICE skipped: needs java and the Stanford CoreNLP jar in pycocoevalcap/spice/lib")
    out: dict[str, Any] = {} if java else {"approximate": True}
    with contextlib.redirect_stdout(io.StringIO()):
        for scorer, names in scorers:
            score, _ = scorer.compute_score(gts, res)
            if isinstance(names, list):
                out.update({n: float(s) for n, s in zip(names, score)})
            else:
                out[names] = float(score)
    return out


def gt_from_dataset(dataset: Any) -> dict[Any, list[str]] | None:
    """``{eval image id: [captions]}`` from a caption eval dataset's annotation rows."""
    rows = getattr(dataset, "annotation", None)
    if not rows or not all("caption" in r for r in rows):
        return None
    id_of = getattr(dataset, "eval_image_id", None)
    gts: dict[Any, list[str]] = {}
    for idx, row in enumerate(rows):
        img_id = id_of(row, idx) if id_of else row.get("image_id", idx)
        caps = row["caption"] if isinstance(row["caption"], list) else [row["caption"]]
        gts.setdefault(img_id, []).extend(caps)
    return gts


def load_results(path: str | Path) -> list[dict]:
    return json.loads(Path(path).read_text())
