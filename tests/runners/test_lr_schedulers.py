import math

import pytest
import torch

from lavislike.registry import LR_SCHEDULERS


def _opt(scales=(1.0,)):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": s} for s in scales]
    return torch.optim.AdamW(groups, lr=1.0)


def test_cosine_matches_hand_computed_values():
    opt = _opt()
    s = LR_SCHEDULERS.get("linear_warmup_cosine_lr")(opt, total_steps=110, warmup_steps=10, warmup_lr=1e-6,
                                                     init_lr=1e-4, min_lr=5e-5)
    assert s.step(0) == pytest.approx(1e-6)
    assert s.step(5) == pytest.approx(1e-6 + (1e-4 - 1e-6) * 0.5)
    assert s.step(10) == pytest.approx(1e-4)
    # 10 + 25 steps into the 100-step cosine: 5e-5 + 0.5 * 5e-5 * (1 + cos(pi / 4))
    assert s.step(35) == pytest.approx(5e-5 + 0.5 * 5e-5 * (1 + math.cos(math.pi / 4)))
    assert s.step(60) == pytest.approx(7.5e-5)
    assert s.step(110) == pytest.approx(5e-5)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-5)


def test_group_lr_scale_is_applied_every_step():
    opt = _opt((1.0, 0.25))
    s = LR_SCHEDULERS.get("constant_lr")(opt, total_steps=10, warmup_steps=0, warmup_lr=0.0, init_lr=2e-3, min_lr=0)
    s.step(3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-3, 5e-4])


def test_step_lr_and_resume_state():
    opt = _opt()
    s = LR_SCHEDULERS.get("linear_warmup_step_lr")(opt, 100, 0, 0.0, 1.0, 0.1, decay_rate=0.5, step_size=10)
    assert [s.lr_at(i) for i in (0, 9, 10, 25, 90)] == pytest.approx([1.0, 1.0, 0.5, 0.25, 0.1])
    s.step(25)
    s2 = LR_SCHEDULERS.get("linear_warmup_step_lr")(_opt(), 100, 0, 0.0, 1.0, 0.1, decay_rate=0.5, step_size=10)
    s2.load_state_dict(s.state_dict())
    assert s2.optimizer.param_groups[0]["lr"] == pytest.approx(0.25)
