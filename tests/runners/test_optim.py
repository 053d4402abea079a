import pytest
import torch
from torch import nn

from lavislike.registry import LR_SCHEDULERS
from lavislike.runners.optim import build_optimizer, build_param_groups


class TinyViT(nn.Module):
    def __init__(self, depth=3):
        super().__init__()
        self.visual = nn.Module()
        self.visual.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.visual.patch_embed = nn.Linear(4, 4)
        self.visual.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(depth)])
        self.visual.norm = nn.LayerNorm(4)
        self.qformer = nn.Linear(4, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def _lr_by_name(model, groups, opt):
    out = {}
    for names, g in zip([g["names"] for g in groups], opt.param_groups):
        for n in names:
            out[n] = (g["lr"], g["weight_decay"])
    return out


def test_decay_groups_and_layer_decay_lrs():
    model = TinyViT(depth=3)
    groups = build_param_groups(model, 0.05, layer_decay=0.5)
    opt = build_optimizer(model, 1e-3, 0.05, (0.9, 0.98), layer_decay=0.5)
    sched = LR_SCHEDULERS.get("constant_lr")(opt, 10, 0, 0.0, 1e-3, 0.0)
    sched.step(4)
    lr = _lr_by_name(model, groups, opt)
    assert "frozen.weight" not in lr
    assert opt.defaults["betas"] == (0.9, 0.98)
    # num_layers = 3: embeddings id 0 -> 0.5**4, block i id i+1 -> 0.5**(3-i), after-blocks id 4 -> 1
    assert lr["visual.cls_token"] == pytest.approx((1e-3 * 0.5**4, 0.05))
    assert lr["visual.patch_embed.weight"] == pytest.approx((1e-3 * 0.5**4, 0.05))
    assert lr["visual.patch_embed.bias"] == pytest.approx((1e-3 * 0.5**4, 0.0))
    for i in range(3):
        assert lr[f"visual.blocks.{i}.weight"] == pytest.approx((1e-3 * 0.5 ** (3 - i), 0.05))
        assert lr[f"visual.blocks.{i}.bias"] == pytest.approx((1e-3 * 0.5 ** (3 - i), 0.0))
    assert lr["visual.norm.weight"] == pytest.approx((1e-3, 0.0))
    assert lr["qformer.weight"] == pytest.approx((1e-3, 0.05))


def test_model_layer_id_hook_wins():
    model = TinyViT(depth=2)
    model.get_layer_id = lambda name: (1, 1) if name.startswith("qformer") else None
    groups = build_param_groups(model, 0.0, layer_decay=0.1)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["qformer.weight"] == pytest.approx(0.1)
    assert scale["visual.blocks.0.weight"] == 1.0


def _reference_adamw(params, grads_per_step, groups, betas, eps):
    """AdamW written out (Loshchilov & Hutter, decoupled decay, bias-corrected moments)."""
    b1, b2 = betas
    state = {id(p): (torch.zeros_like(p, dtype=torch.float64), torch.zeros_like(p, dtype=torch.float64))
             for p in params}
    values = {id(p): p.detach().double().clone() for p in params}
    for t, (grads, lrs) in enumerate(grads_per_step, start=1):
        for gi, g in enumerate(groups):
            lr = lrs[gi]
            for p in g["params"]:
                m, v = state[id(p)]
                grad = grads[id(p)].double()
                w = values[id(p)]
                w.mul_(1 - lr * g["weight_decay"])
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
                w.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    return values


def test_adamw_is_fused_on_cpu_and_matches_written_out_adamw():
    torch.manual_seed(0)
    model = TinyViT()
    betas, eps = (0.9, 0.98), 1e-8
    opt = build_optimizer(model, init_lr=1e-2, weight_decay=0.05, betas=betas, layer_decay=0.7, eps=eps)
    assert opt.defaults.get("fused") is True  # CPU has torch's fused kernel
    groups = [{"params": list(g["params"]), "weight_decay": g["weight_decay"]} for g in opt.param_groups]
    assert {g["weight_decay"] for g in groups} == {0.0, 0.05}
    params = [p for g in groups for p in g["params"]]
    steps = []
    for step in range(6):
        grads = {id(p): torch.randn_like(p) for p in params}
        # a schedule: lr changes every step, scaled per group by layer decay
        steps.append((grads, [1e-2 * g["lr_scale"] * (0.5 + 0.1 * step) for g in opt.param_groups]))
    expected = _reference_adamw(params, steps, groups, betas, eps)
    for grads, lrs in steps:
        for p in params:
            p.grad = grads[id(p)].clone()
        for g, lr in zip(opt.param_groups, lrs):
            g["lr"] = lr
        opt.step()
    for p in params:
        torch.testing.assert_close(p.detach().double(), expected[id(p)], rtol=1e-5, atol=1e-6)
