"""Sizing the shipped hub-LLM model types on ``meta`` offline (suite runs with HF_HUB_OFFLINE=1).

The LLM's parameter count is checked against transformers' own model built from the same
facts (an independent path: no lavislike code) and, for OPT, against the published counts.
"""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import transformers

from lavislike.errors import CheckpointError
from lavislike.models.llms.base import known_config
from lavislike.models.loading import load_model_and_preprocess

OPT_PUBLISHED = {"facebook/opt-2.7b": 2_651_596_800, "facebook/opt-6.7b": 6_658_473_984}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.lru_cache(maxsize=None)  # several model types share an LLM
def _reference_count(hub_id: str, auto: str) -> int:
    data = known_config(hub_id)
    untied = data.get("tie_word_embeddings") is False
    config = transformers.AutoConfig.for_model(data.pop("model_type"), **data)
    with torch.device("meta"):
        model = getattr(transformers, auto).from_config(config)
    count = _count(model)
    # transformers 5 ties T5's head whatever the config says; FlanT5 checkpoints keep it apart
    head, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    if untied and head.weight is inputs.weight:
        count += head.weight.numel()
    return count


def _shipped_types() -> list[tuple[str, str]]:
    """Every model type of every model class (a class registered under several names once)."""
    from lavislike.registry import MODELS

    seen, out = set(), []
    for arch in sorted(MODELS.names()):
        cls = MODELS.get(arch)
        if cls in seen:
            continue
        seen.add(cls)
        out += [(arch, model_type) for model_type in getattr(cls, "MODEL_TYPES", {})]
    return out


AUTO = {"causal_lm": "AutoModelForCausalLM", "seq2seq_lm": "AutoModelForSeq2SeqLM"}
CONFIGS = Path(__file__).resolve().parents[2] / "lavislike" / "models" / "configs"


def test_every_shipped_model_type_yaml_is_a_registered_type():
    from lavislike.registry import MODELS

    named = {CONFIGS / path for arch in MODELS.names() for path in getattr(MODELS.get(arch), "MODEL_TYPES", {}).values()}
    assert set(CONFIGS.rglob("*.yaml")) == named


@pytest.mark.parametrize("arch,model_type", _shipped_types(), ids=lambda v: v)
def test_every_shipped_model_type_builds_on_meta_offline(arch, model_type):
    model, vis, txt = load_model_and_preprocess(arch, model_type, load_pretrained=False, device="meta")
    assert model.cfg.model_type == model_type
    assert all(p.is_meta for p in model.parameters())
    assert "eval" in vis and "eval" in txt
    hub_id = model.cfg.llm.path if "llm" in model.cfg else None
    if hub_id and known_config(hub_id) is not None:  # a hub LLM: the size transformers gives it
        assert _count(model.llm) == _reference_count(hub_id, AUTO[model.cfg.llm.name])
        if hub_id in OPT_PUBLISHED:
            assert _count(model.llm) == OPT_PUBLISHED[hub_id]


def test_every_shipped_hub_llm_has_its_facts():
    from lavislike.config import model_config
    from lavislike.registry import MODELS

    for arch in ("blip2_opt", "blip2_t5"):
        for model_type in MODELS.get(arch).MODEL_TYPES:
            path = model_config(arch, model_type).llm.path
            if path and "/" in path and not path.startswith((".", "/", "$")):
                assert known_config(path) is not None, f"{arch}/{model_type}: {path}"
    assert _reference_count("facebook/opt-6.7b", "AutoModelForCausalLM") == OPT_PUBLISHED["facebook/opt-6.7b"]


def test_facts_are_not_used_when_weights_would_be_read():
    # a real build reads the weights from the hub: the kept facts must not hide that it cannot
    from lavislike.registry import LLMS
    from omegaconf import OmegaConf

    cls = LLMS.get("causal_lm")
    block = OmegaConf.structured(LLMS.get_config("causal_lm"))
    block.path = "facebook/opt-2.7b"
    with pytest.raises(CheckpointError, match="facebook/opt-2.7b"):
        cls.from_config(block, device="cpu")
