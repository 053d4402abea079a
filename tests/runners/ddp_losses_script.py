"""Launched by test_ddp_losses.py under torchrun (2 gloo ranks): the stage-1 loss functions
on this rank's rows of a fixed global batch, for even and uneven per-rank batches.

Writes ``<out>/rank<r>.pt`` with every loss, the gradients of this rank's inputs and the
drawn negatives; the test assembles the ranks and compares with one-process references.
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from lavislike.common import dist as D
from lavislike.models import losses

GLOBAL = 8


def global_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(GLOBAL, 3, 6, generator=g), dim=-1)
    txt = F.normalize(torch.randn(GLOBAL, 6, generator=g), dim=-1)
    ids = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5])
    logits = torch.randn(GLOBAL, 5, 11, generator=g)  # per sample: 5 positions, 11 classes
    labels = torch.randint(0, 11, (GLOBAL, 5), generator=g)
    labels[torch.rand(GLOBAL, 5, generator=g) < 0.4] = -100
    return img, txt, ids, logits, labels


def run(sizes: list[int], rank_seed: int) -> dict:
    """Every case on this rank's slice of the global batch split as ``sizes``."""
    rank = D.get_rank()
    start, n = sum(sizes[:rank]), sizes[rank]
    img_all, txt_all, ids_all, logits_all, labels_all = global_batch()
    out = {}
    for grad in (False, True):
        for with_ids in (False, True):
            key = f"grad{int(grad)}_ids{int(with_ids)}"
            img = img_all[start:start + n].clone().requires_grad_(True)
            txt = txt_all[start:start + n].clone().requires_grad_(True)
            temp = torch.tensor(0.3, requires_grad=True)
            ids = ids_all[start:start + n] if with_ids else None
            loss, sim_i2t, sim_t2i = losses.itc_loss(img, txt, temp, ids, 0.1, gather_grad=grad)
            loss.backward()
            out[f"{key}_loss"] = loss.detach()
            out[f"{key}_img_grad"], out[f"{key}_txt_grad"] = img.grad, txt.grad
            out[f"{key}_temp_grad"] = temp.grad
            # every rank's generator differs; the negatives must follow rank 0's
            torch.manual_seed(123 if rank == 0 else rank_seed)
            neg_text, neg_image = losses.hard_negative_indices(sim_i2t.detach(), sim_t2i.detach(), ids)
            out[f"{key}_neg_text"], out[f"{key}_neg_image"] = neg_text, neg_image
            out[f"{key}_after"] = torch.rand(3)  # the generator after the draw
    logits = logits_all[start:start + n].clone().requires_grad_(True)
    loss = losses.token_cross_entropy(logits.flatten(0, 1), labels_all[start:start + n].flatten(), 0.1)
    loss.backward()
    out["tokens_loss"], out["tokens_grad"] = loss.detach(), logits.grad
    return out


if __name__ == "__main__":
    D.init_distributed_mode(backend="gloo")
    folder = Path(sys.argv[1])
    for name, sizes in (("even", [4, 4]), ("uneven", [5, 3])):
        result = run(sizes, rank_seed=999)
        (folder / name).mkdir(parents=True, exist_ok=True)
        torch.save(result, folder / name / f"rank{D.get_rank()}.pt")
    D.barrier()
