"""Launched by test_fsdp_blip2.py with 2 gloo ranks: the FSDP fp16 grad scaler on a model
with one sharded (``fully_shard``) and one replicated Linear. Step 1: finite gradients, so
they are unscaled (compared with the unscaled gradients of the same loss, computed without
scaling) and the step is taken. Step 2: an inf in rank 1's input only: every rank skips the
step and halves the scale. Writes ``<out>/rank<r>.json``."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

from lavislike.common.dist import init_distributed_mode
from lavislike.runners.distributed import sharded_grad_scaler, sync_replicated_grads

init_distributed_mode(backend="gloo")  # leaves the group at exit as the CLI's runs do
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
fully_shard(model[0])
opt = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = sharded_grad_scaler("cpu")
x = torch.randn(3, 4, generator=torch.Generator().manual_seed(rank))

model(x).sum().backward()
sync_replicated_grads(model)
reference = [p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad.clone() for p in model.parameters()]
opt.zero_grad()
scale0 = scaler.get_scale()
scaler.scale(model(x).sum()).backward()
sync_replicated_grads(model)
scaler.unscale_(opt)
unscaled = [p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad for p in model.parameters()]
err = max(float((a - b).abs().max()) for a, b in zip(unscaled, reference))
scaler.step(opt)
scaler.update()
after1 = [p.full_tensor() if hasattr(p, "full_tensor") else p.detach().clone() for p in model.parameters()]

opt.zero_grad()
if rank == 1:
    x[0, 0] = float("inf")
scaler.scale(model(x).sum()).backward()
sync_replicated_grads(model)
scaler.step(opt)
scaler.update()
after2 = [p.full_tensor() if hasattr(p, "full_tensor") else p.detach() for p in model.parameters()]
moved = max(float((a - b).abs().max()) for a, b in zip(after1, after2) if torch.isfinite(b).all())
finite = all(bool(torch.isfinite(p).all()) for p in after2)
Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(
    {"unscale_err": err, "scale0": scale0, "scale_after_skip": scaler.get_scale(), "moved_on_skip": moved,
     "finite": finite, "sharded": type(model[0].weight).__name__}))
