"""Options every encoder shares: freeze, precision, gradient checkpointing, pretrained."""
import pytest
import torch
from safetensors.torch import save_file

from lavislike.errors import CheckpointError, ConfigError
from lavislike.registry import IMAGE_ENCODERS

TINY = ["eva_vit_tiny", "clip_vit_tiny"]


@pytest.mark.parametrize("name", TINY)
def test_frozen_encoder_stays_eval_and_has_no_grad(name):
    enc = IMAGE_ENCODERS.get(name).from_config({"freeze": True})
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    out = enc(torch.randn(2, 3, 32, 32, requires_grad=True))
    assert out.grad_fn is None


@pytest.mark.parametrize("name", TINY)
def test_bf16_precision_casts_every_float_tensor(name):
    enc = IMAGE_ENCODERS.get(name).from_config({"precision": "bf16"})
    assert {p.dtype for p in enc.parameters()} == {torch.bfloat16}
    out = enc(torch.randn(1, 3, 32, 32))  # fp32 images are cast on the way in
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("name", TINY)
def test_grad_checkpointing_gives_same_outputs_and_grads(name):
    cls = IMAGE_ENCODERS.get(name)
    torch.manual_seed(0)
    plain = cls.from_config({"freeze": False})
    ckpt = cls.from_config({"freeze": False, "use_grad_checkpoint": True})
    ckpt.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 32, 32)
    outs, grads = [], []
    for enc in (plain, ckpt):
        enc.train()
        out = enc(images)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters()})
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], atol=1e-6, rtol=1e-5)


def test_checkpointing_is_really_used(monkeypatch):
    import lavislike.models.image_encoders.base as base

    calls = []
    real = base.checkpoint

    def spy(fn, *args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(base, "checkpoint", spy)
    enc = IMAGE_ENCODERS.get("eva_vit_tiny").from_config({"freeze": False, "use_grad_checkpoint": True})
    enc(torch.randn(1, 3, 32, 32)).sum().backward()
    assert calls == [False, False]  # one per block, non-reentrant


def test_pretrained_file_loads_at_build(tmp_path):
    cls = IMAGE_ENCODERS.get("eva_vit_tiny")
    src = cls.from_config({"freeze": False})
    path = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    built = cls.from_config({"pretrained": str(path)})
    images = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(built(images), src(images))
    pth = tmp_path / "lavis.pth"  # LAVIS files wrap the dict under "model"
    torch.save({"model": {"visual_encoder." + k: v for k, v in src.state_dict().items()}}, pth)
    torch.testing.assert_close(cls.from_config({"pretrained": str(pth)})(images), src(images))


def test_pretrained_errors_are_one_line(tmp_path):
    cls = IMAGE_ENCODERS.get("eva_vit_tiny")
    with pytest.raises(CheckpointError, match="not found"):
        cls.from_config({"pretrained": str(tmp_path / "nope.pth")})
    with pytest.raises(ConfigError, match="no published weights"):
        cls.from_config({"pretrained": "default"})
    with pytest.raises(ConfigError, match="use_grad_checkpointing"):
        cls.from_config({"use_grad_checkpointing": True})
