"""``model.train()`` on every BLIP-2 composition: frozen parts stay in eval, the rest trains.

The frozen parts are named here from the config (the image encoder with ``freeze: true``,
the LLM with ``llm.freeze``), not read from the code's own marks; every module under
them must be in eval mode after ``train()``, and every module outside them in train mode.
"""
from __future__ import annotations

import pytest
import torch

from lavislike.models import load_model


@pytest.mark.parametrize("arch", ["blip2", "blip2_opt", "blip2_t5"])
def test_train_keeps_frozen_parts_in_eval(arch):
    torch.manual_seed(0)
    model = load_model(arch, "tiny")  # load_model ends with model.train()
    frozen = ("image_encoder",) + (("llm.model",) if arch != "blip2" else ())
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith(frozen))
    for _ in range(2):  # after eval() too: train() must not wake the frozen parts
        for name, module in model.named_modules():
            inside = any(name == f or name.startswith(f + ".") for f in frozen)
            assert module.training != inside, f"{arch}: {name or '<model>'} training={module.training}"
        model.eval()
        assert not any(m.training for m in model.modules())
        model.train()
    if arch != "blip2":
        # the LLM adapter itself (not a frozen part) trains; its HF model does not
        assert model.llm.training and not model.llm.model.training
