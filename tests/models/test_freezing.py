"""Freezing and precision helpers, on plain modules and on a registered encoder."""
import warnings

import pytest
import torch
from torch import nn

import lavislike.models.freezing as freezing
from lavislike.errors import ConfigError
from lavislike.models.freezing import (
    cast_precision,
    freeze,
    frozen_forward,
    is_frozen,
    parse_precision,
    unfreeze,
)
from lavislike.models.image_encoders import EvaViT


class Composite(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
        self.head = nn.Linear(4, 2)


def test_freeze_marks_and_keeps_eval_through_any_parent_train():
    import copy
    import pickle

    model = Composite()
    freeze(model.encoder)
    assert is_frozen(model.encoder) and not is_frozen(model.head)
    assert all(not p.requires_grad for p in model.encoder.parameters())
    model.train()
    assert model.training and model.head.training
    assert not model.encoder.training and not model.encoder[1].training
    plain = nn.Sequential(model.encoder, nn.Linear(4, 4))
    plain.train()  # any parent, with no help from its class
    assert plain.training and plain[1].training and not model.encoder.training
    for again in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        again.train()
        assert again.head.training and not again.encoder.training and not again.encoder[1].training
    unfreeze(model.encoder)
    model.train()
    assert model.encoder.training and model.encoder[1].training
    assert all(p.requires_grad for p in model.encoder.parameters())


def test_frozen_forward_uses_no_grad_not_inference_mode():
    lin = freeze(nn.Linear(3, 3))
    with frozen_forward(lin):
        out = lin(torch.randn(2, 3, requires_grad=True))
    assert not out.requires_grad and not out.is_inference()
    trainable = nn.Linear(3, 3)
    with frozen_forward(trainable):
        assert trainable(torch.randn(2, 3)).requires_grad


@pytest.mark.parametrize(
    "text,dtype",
    [
        ("fp32", torch.float32),
        ("FP16", torch.float16),
        ("bf16", torch.bfloat16),
        ("bfloat16", torch.bfloat16),
    ],
)
def test_parse_precision(text, dtype):
    assert parse_precision(text) is dtype


def test_parse_precision_error_lists_valid_values():
    with pytest.raises(ConfigError, match=r"fp32, fp16, bf16"):
        parse_precision("int8")


def test_cpu_fp16_falls_back_once_unless_forced(monkeypatch):
    monkeypatch.setattr(freezing, "_cpu_fp16_warned", False)
    enc = EvaViT.from_config(
        {"image_size": 16, "patch_size": 8, "width": 16, "depth": 1, "heads": 2, "precision": "fp16"}
    )
    assert enc.dtype == torch.float16  # kept until it runs: it may be moved to a GPU first
    with pytest.warns(RuntimeWarning, match="fp16 on the CPU"):
        out = enc(torch.randn(1, 3, 16, 16))
    assert out.dtype == torch.float32 and enc.dtype == torch.float32
    again = EvaViT.from_config(
        {"image_size": 16, "patch_size": 8, "width": 16, "depth": 1, "heads": 2, "precision": "fp16"}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per process, not per module
        again(torch.randn(1, 3, 16, 16))
    forced = cast_precision(
        EvaViT.from_config({"image_size": 16, "patch_size": 8, "width": 16, "depth": 1, "heads": 2}),
        "fp16",
        force=True,
    )
    assert forced(torch.randn(1, 3, 16, 16)).dtype == torch.float16
