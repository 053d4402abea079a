"""AMP dtype and frozen-part storage agree (lavislike/runners/amp.py), on a real tiny BLIP-2 OPT
whose frozen ViT and LLM are stored in half precision as the paper configs store them."""
from __future__ import annotations

import pytest
import torch

from lavislike.models import load_model
from lavislike.runners.amp import choose_amp_dtype, store_frozen_in

CUDA = torch.device("cuda")  # only consulted, nothing is moved: no GPU needed
CPU = torch.device("cpu")


def tiny(llm: str, vit: str):
    return load_model("blip2_opt", "tiny", llm={"dtype": llm}, image_encoder={"precision": vit})


@pytest.mark.parametrize("llm, vit, device, want", [
    ("fp16", "fp16", CUDA, torch.float16),  # the OPT configs on a GPU: fp16 AMP, as LAVIS
    ("bf16", "bf16", CUDA, torch.bfloat16),
    ("bf16", "fp16", CPU, torch.bfloat16),  # fp16 is no CPU AMP dtype (it falls back to fp32)
    ("fp32", "fp32", CPU, torch.bfloat16),  # nothing frozen in half precision: the default
])
def test_null_amp_dtype_follows_the_frozen_parts(llm, vit, device, want):
    assert choose_amp_dtype(None, tiny(llm, vit), device) == want


def test_explicit_amp_dtype_wins():
    assert choose_amp_dtype(torch.bfloat16, tiny("fp16", "fp16"), CUDA) == torch.bfloat16


def test_frozen_parts_are_stored_in_the_amp_dtype():
    model = tiny("bf16", "fp16")  # the FlanT5 configs: bf16 LLM, fp16 ViT-g, amp_dtype bf16
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    n_vit = sum(1 for _ in model.image_encoder.parameters())
    assert store_frozen_in(model, torch.bfloat16, CUDA) == n_vit
    assert {p.dtype for p in model.image_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}
    assert {n: p.dtype for n, p in model.named_parameters() if p.requires_grad} == trainable
    assert all(d == torch.float32 for d in trainable.values())
    assert store_frozen_in(model, torch.bfloat16, CUDA) == 0  # nothing left to cast


def test_cast_vit_computes_like_a_bf16_copy_under_autocast():
    """After the cast, the ViT's features under bf16 autocast equal those of a ViT built in
    bf16 from the start (the cast keeps the weights: fp16 -> bf16 rounding only)."""
    model = tiny("fp32", "fp16")
    ref = tiny("fp32", "fp32")
    ref.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    ref.image_encoder.to(torch.bfloat16)
    store_frozen_in(model, torch.bfloat16, CUDA)
    img = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = model.image_encoder(img), ref.image_encoder(img)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
