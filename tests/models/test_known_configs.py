"""Sizing the shipped hub-LLM model types on ``meta`` offline (suite runs with HF_HUB_OFFLINE=1).

The LLM's parameter count is checked against transformers' own model built from the same
facts (an independent path: no lavislike code) and, for OPT, against the published counts.
"""
from __future__ import annotations

import pytest
import torch
import transformers

from lavislike.errors import CheckpointError
from lavislike.models.llms.base import known_config
from lavislike.models.loading import load_model_and_preprocess

OPT_PUBLISHED = {"facebook/opt-2.7b": 2_651_596_800, "facebook/opt-6.7b": 6_658_473_984}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


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


@pytest.mark.parametrize("arch,model_type,hub_id,auto", [
    ("blip2_opt", "pretrain_opt2.7b", "facebook/opt-2.7b", "AutoModelForCausalLM"),
    ("blip2_t5", "pretrain_flant5xl", "google/flan-t5-xl", "AutoModelForSeq2SeqLM"),
])
def test_meta_build_offline_has_the_hub_models_size(arch, model_type, hub_id, auto):
    model, vis, txt = load_model_and_preprocess(arch, model_type, load_pretrained=False, device="meta")
    assert model.cfg.llm.path == hub_id
    assert all(p.is_meta for p in model.parameters())
    assert _count(model.llm) == _reference_count(hub_id, auto)
    if hub_id in OPT_PUBLISHED:
        assert _count(model.llm) == OPT_PUBLISHED[hub_id]
    assert "eval" in vis and "eval" in txt


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
