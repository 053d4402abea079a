"""The Q-Former's attention (``lavislike.models.attention``): its own fp32 path for
reduced-precision CPU training over few keys, PyTorch's SDPA otherwise. Both are checked
against a hand-written fp32 attention with its autograd gradients (tolerance: bf16 keeps 8
significant bits, ~0.4% relative per rounding; a few roundings per value stay within 2%),
and the path against PyTorch's math kernel, which PyTorch runs whenever dropout is on."""
from __future__ import annotations

import math

import pytest
import torch

from lavislike.models import attention
from lavislike.models.attention import SCORES_MAX_KEYS, scaled_dot_product_attention, use_fp32_path

REL_TOL = 2e-2


def _reference(q, k, v, mask):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


def _inputs(dtype, keys, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(3, 4, n, 16, generator=g) for n in (9, keys, keys))
    mask = torch.ones(3, 1, 9, keys, dtype=torch.bool)
    mask[0, :, :, keys - 3:] = False  # padded keys of the first row
    return [t.to(dtype).requires_grad_() for t in (q, k, v)], mask


def _rel(a, b):
    return ((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm()).item()


@pytest.mark.parametrize("dtype,keys", [(torch.bfloat16, 20), (torch.bfloat16, SCORES_MAX_KEYS + 40),
                                        (torch.float32, 20)])
def test_output_and_gradients_match_hand_written_attention(dtype, keys):
    (q, k, v), mask = _inputs(dtype, keys)
    out = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out.square().sum().backward()
    (rq, rk, rv), _ = _inputs(torch.float32, keys)
    ref = _reference(rq, rk, rv, mask)
    ref.square().sum().backward()
    assert out.dtype == dtype
    tol = REL_TOL if dtype == torch.bfloat16 else 1e-5
    assert _rel(out, ref) < tol
    for got, want in ((q.grad, rq.grad), (k.grad, rk.grad), (v.grad, rv.grad)):
        assert _rel(got, want) < tol
    # masked keys get no gradient
    assert float(k.grad[0, :, keys - 3:].abs().max()) == 0.0


def test_kernel_rule():
    (q, k, _), _ = _inputs(torch.bfloat16, 20)
    assert use_fp32_path(q, k)  # bf16 training over few keys
    (q_long, k_long, _), _ = _inputs(torch.bfloat16, SCORES_MAX_KEYS + 1)
    assert not use_fp32_path(q_long, k_long)  # many keys: flash's backward wins
    (q32, k32, _), _ = _inputs(torch.float32, 20)
    assert not use_fp32_path(q32, k32)  # fp32: PyTorch's choice (parity with transformers)
    with torch.no_grad():
        assert not use_fp32_path(q, k)  # inference: flash's forward is faster
    assert not use_fp32_path(q.detach(), k.detach())
    # with dropout PyTorch runs its math kernel, which the path computes: any dtype and length
    assert use_fp32_path(q32, k32, 0.1)
    assert use_fp32_path(q_long, k_long, 0.1)


def test_qformer_training_under_bf16_autocast(monkeypatch):
    """A Q-Former pass over [queries; text] reading image features (the ITM pass), trained
    under bf16 autocast: self-attention takes the path, cross-attention over many patches
    keeps flash, and the output and the query-token gradient stay as close to fp32
    as with PyTorch's own kernel choice."""
    from lavislike.models.qformer import QFormer, QFormerConfig

    torch.manual_seed(0)
    cfg = QFormerConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                        vocab_size=100, num_query_token=8, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    qformer = QFormer(cfg, encoder_width=48).train()
    with torch.no_grad():
        qformer.query_tokens.normal_()  # zeros at init: every query would be alike
    image = torch.randn(3, SCORES_MAX_KEYS + 20, 48)
    ids = torch.randint(5, 100, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 5:] = 0

    chosen = []
    rule = attention.use_fp32_path

    def run(autocast):
        qformer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = qformer.query_outputs(image, ids, mask)
        out.float().square().mean().backward()
        return out.detach().float(), qformer.query_tokens.grad.clone()

    monkeypatch.setattr(attention, "use_fp32_path", lambda q, k, p=0.0: chosen.append(rule(q, k, p)) or chosen[-1])
    out32, grad32 = run(False)
    assert chosen and not any(chosen)
    chosen.clear()
    out16, grad16 = run(True)
    # two layers: self-attention on the path both times, the one cross-attention (148 patches) on flash
    assert chosen == [True, False, True]
    monkeypatch.setattr(attention, "use_fp32_path", lambda q, k, p=0.0: False)
    out_default, grad_default = run(True)
    assert _rel(out16, out32) < REL_TOL
    assert _rel(out16, out32) < 1.5 * _rel(out_default, out32)
    assert _rel(grad16, grad32) < 1.5 * _rel(grad_default, grad32) + 1e-3


def test_with_dropout_equals_pytorch_math_kernel():
    """With attention dropout PyTorch runs its math kernel on the CPU (flash has none): the
    path computes the same values and draws the same dropout masks from the same seed."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    (q, k, v), mask = _inputs(torch.bfloat16, 20, seed=3)
    assert use_fp32_path(q, k)
    torch.manual_seed(5)
    ours = scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.3)
    torch.manual_seed(5)
    with sdpa_kernel(SDPBackend.MATH):
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.3)
    without = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert _rel(ours, without) > 0.1  # dropout did something
    assert _rel(ours, ref) < 1e-2  # the same masks (bf16 outputs: a rounding apart at most)


@pytest.mark.parametrize("keys", [20, SCORES_MAX_KEYS + 40])
def test_fp32_with_dropout_equals_pytorch_math_kernel(keys):
    """fp32 training with dropout (LAVIS's configs without AMP) takes the path too: the
    values, gradients and dropout masks of PyTorch's math kernel, which it runs then."""
    (q, k, v), mask = _inputs(torch.float32, keys, seed=4)
    (rq, rk, rv), _ = _inputs(torch.float32, keys, seed=4)
    assert use_fp32_path(q, k, 0.3)
    torch.manual_seed(5)
    ours = scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.3)
    ours.square().sum().backward()
    torch.manual_seed(5)
    ref = torch.nn.functional.scaled_dot_product_attention(rq, rk, rv, attn_mask=mask, dropout_p=0.3)
    ref.square().sum().backward()
    without = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert _rel(ours, without) > 0.1  # dropout did something
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    for got, want in ((q.grad, rq.grad), (k.grad, rk.grad), (v.grad, rv.grad)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("autocast", [True, False])
def test_stage1_step_equals_pytorch_with_dropout(monkeypatch, autocast):
    """The real configs train with attention dropout 0.1, where PyTorch runs its math kernel
    on the CPU: the stage-1 step, in fp32 and under bf16 autocast, gives the same losses and
    gradients through the path as through PyTorch (autocast must not run the path's fp32
    products in bf16 again)."""
    from lavislike.models import load_model

    torch.manual_seed(0)
    model = load_model("blip2", "tiny", load_pretrained=False).train()
    assert model.qformer.layers[0].self_attn.attn_dropout > 0
    g = torch.Generator().manual_seed(0)
    samples = {"image": torch.randn(4, 3, 32, 32, generator=g),
               "text_input": ["a dog on a couch", "two cats", "a red bus in the street", "a man"],
               "image_id": torch.arange(4)}

    def step():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # dropout masks and the ITM negatives
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(samples)
        out["loss"].backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    chosen = []
    rule = attention.use_fp32_path
    monkeypatch.setattr(attention, "use_fp32_path", lambda q, k, p=0.0: chosen.append(rule(q, k, p)) or chosen[-1])
    ours, ours_grads = step()
    assert any(chosen)
    monkeypatch.setattr(attention, "use_fp32_path", lambda q, k, p=0.0: False)
    ref, ref_grads = step()
    for key in ("loss_itc", "loss_itm", "loss_lm"):
        assert ours[key].item() == pytest.approx(ref[key].item(), rel=1e-6), key
    for name, grad in ref_grads.items():  # (a key bias's gradient is rounding noise around 0)
        assert float((ours_grads[name] - grad).abs().max()) <= 1e-4 * float(grad.abs().max()) + 1e-6, name
