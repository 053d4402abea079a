"""Frozen parts stored in bf16 (``run.frozen_precision``, ``image_encoder.precision``,
``llm.dtype``): features and losses stay within a stated tolerance of fp32, and the
trainable parts still get their gradients.

Tolerance: bf16 keeps 8 significant bits (relative rounding 2**-9 = 0.2% per value); after
the tiny ViT and OPT the features and the loss stay within 3% of fp32 (the bench's ViT:
0.3%, bench/README.md). The fp32 reference is the same model uncast, which
tests/models/test_blip2_opt.py checks against transformers.
"""
from __future__ import annotations

import copy

import pytest
import torch

from blip2_llm_tiny import images, save_hf_blip2
from lavislike.errors import ConfigError
from lavislike.models.convert.hf_llm import from_hf_llm
from lavislike.runners.precision import (
    cast_frozen_parts,
    cpu_has_native_bf16,
    frozen_roots,
    resolve_frozen_precision,
)

TEXTS = ["a dog on a couch", "two cats laying on a red blanket"]
REL_TOL = 3e-2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder, _, _ = save_hf_blip2(tmp_path_factory.mktemp("opt"), "opt")
    fp32 = from_hf_llm(folder)
    bf16 = copy.deepcopy(fp32)
    cast = cast_frozen_parts(bf16, torch.bfloat16)
    return fp32, bf16, cast


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_only_frozen_parts_are_cast(models):
    fp32, bf16, cast = models
    assert set(cast) == {"image_encoder", "llm.model"}
    assert bf16.image_encoder.dtype == torch.bfloat16 and bf16.llm.dtype == torch.bfloat16
    trainable = [p for p in bf16.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert bf16.ln_vision.weight.dtype == torch.float32
    assert set(frozen_roots(fp32)) == set(cast)


def test_bf16_features_and_loss_within_tolerance(models):
    fp32, bf16, _ = models
    img = images()
    with torch.no_grad():
        ref, got = fp32.encode_image(img), bf16.encode_image(img)
        assert got.dtype == torch.float32  # ln_vision and the Q-Former read fp32
        assert 0 < _rel(got, ref) < REL_TOL
        loss32 = fp32({"image": img, "text_input": TEXTS})["loss"]
        loss16 = bf16({"image": img, "text_input": TEXTS})["loss"]
        with torch.autocast("cpu", dtype=torch.bfloat16):  # run.amp=true on the CPU
            loss_amp = bf16({"image": img, "text_input": TEXTS})["loss"]
    assert loss16.item() == pytest.approx(loss32.item(), rel=REL_TOL)
    assert loss_amp.item() == pytest.approx(loss32.item(), rel=REL_TOL)


def test_gradients_reach_trainable_parts_through_bf16_frozen_parts(models):
    fp32, bf16, _ = models
    grads = []
    for model in (fp32, bf16):
        model.train()
        model.zero_grad(set_to_none=True)
        model({"image": images(), "text_input": TEXTS})["loss"].backward()
        assert all(p.grad is None for p in model.image_encoder.parameters())
        assert all(p.grad is None for p in model.llm.parameters())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        model.eval()
    ref, got = grads
    assert set(got) == set(ref)
    for name in ("llm_proj.weight", "qformer.query_tokens"):
        assert got[name].dtype == torch.float32 and torch.isfinite(got[name]).all()
        cos = torch.nn.functional.cosine_similarity(got[name].flatten(), ref[name].flatten(), dim=0)
        assert cos > 0.99, name


def test_frozen_precision_values():
    cpu = torch.device("cpu")
    assert resolve_frozen_precision("model", cpu) is None
    assert resolve_frozen_precision("bf16", cpu) == torch.bfloat16
    expected = torch.bfloat16 if cpu_has_native_bf16() else None
    assert resolve_frozen_precision("auto", cpu) is expected
    with pytest.raises(ConfigError, match="fp16 is slow or unsupported on the CPU"):
        resolve_frozen_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="'bf61' is not valid.*bf16"):
        resolve_frozen_precision("bf61", cpu)


def test_bf16_training_runs_the_llm_attention_on_the_math_kernel(models, monkeypatch):
    """CPU flash attention's bf16 backward is the slow kernel at these lengths
    (lavislike.models.attention): a bf16 LLM's training forward takes PyTorch's math
    kernel, an fp32 one or inference keeps flash; the gradients match fp32 as before."""
    fp32, bf16, _ = models
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        calls.append((q.dtype, q.requires_grad, torch.backends.cuda.flash_sdp_enabled()))
        return real(q, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    grads = []
    for model in (fp32, bf16):
        calls.clear()
        model.train()
        model.zero_grad(set_to_none=True)
        model({"image": images(), "text_input": TEXTS})["loss"].backward()
        # the LLM's attention: its dtype, and gradients (the soft prompt); the frozen ViT's have none
        llm_calls = [flash for dtype, grad, flash in calls if dtype == model.llm.dtype and grad]
        assert llm_calls and all(flash == (model is fp32) for flash in llm_calls)
        grads.append(model.qformer.query_tokens.grad.clone())
        calls.clear()
        with torch.no_grad():
            model({"image": images(), "text_input": TEXTS})
        assert calls and all(flash for _, _, flash in calls)
        model.eval()
    cos = torch.nn.functional.cosine_similarity(grads[0].flatten(), grads[1].flatten(), dim=0)
    assert cos > 0.99
