"""The stage-1 losses against references written out here, in 1 process and 2 gloo processes.

* ITC gradients: LAVIS's (the gathered batch is a constant: image-to-text similarities
  train the image side only, text-to-image the text side only) by default, the full
  gradient with ``gather_grad=True``; each against an autograd reference on the global batch.
* ITM hard negatives: LAVIS's loop (``torch.multinomial`` per text, then per image, from
  the same generator state) on the global batch - whatever the other ranks' generators hold.
* Means over the global batch (rows, tokens) when ranks hold different numbers of them.

Two ranks' results are combined as DDP combines them: losses and gradients are averaged
over ranks (a rank's input rows get gradient only there, so a row's gradient is its rank's
divided by the world size).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lavislike.models import losses

sys.path.insert(0, str(Path(__file__).parent))
from ddp_losses_script import global_batch, run  # noqa: E402
from script_env import torchrun  # noqa: E402

SCRIPT = Path(__file__).parent / "ddp_losses_script.py"
CASES = [(grad, ids) for grad in (0, 1) for ids in (0, 1)]


# -- references ------------------------------------------------------------------------------
def reference_itc(img, txt, temp, ids=None, gather_grad=False, smoothing=0.1):
    """ITC on one global batch, written from the paper + LAVIS: max over queries, soft targets."""
    other_txt = txt if gather_grad else txt.detach()
    other_img = img if gather_grad else img.detach()
    sim_i2t = torch.einsum("iqd,jd->ijq", img, other_txt).amax(-1) / temp
    sim_t2i = torch.einsum("jqd,id->ijq", other_img, txt).amax(-1) / temp
    n = img.shape[0]
    if ids is None:
        target = (1 - smoothing) * torch.eye(n) + smoothing / n
    else:
        pos = (ids[:, None] == ids[None]).float()
        target = 0.9 * pos / pos.sum(1, keepdim=True) + 0.1 / n
    i2t = -(target * torch.log_softmax(sim_i2t, 1)).sum(1).mean()
    t2i = -(target * torch.log_softmax(sim_t2i, 1)).sum(1).mean()
    return (i2t + t2i) / 2, sim_i2t.detach(), sim_t2i.detach()


def lavis_negatives(sim_i2t, sim_t2i, ids=None):
    """LAVIS ``Blip2Qformer.forward``'s draw: mask positives with -10000, softmax, then one
    ``torch.multinomial(row, 1)`` per text (its negative image), then per image."""
    sim_i2t, sim_t2i = sim_i2t.clone(), sim_t2i.clone()
    if ids is None:
        sim_t2i.fill_diagonal_(-10000)
        sim_i2t.fill_diagonal_(-10000)
    else:
        mask = ids[:, None] == ids[None]
        sim_t2i.masked_fill_(mask, -10000)
        sim_i2t.masked_fill_(mask, -10000)
    w_t2i, w_i2t = F.softmax(sim_t2i, dim=1), F.softmax(sim_i2t, dim=1)
    neg_image = [torch.multinomial(w_t2i[b], 1).item() for b in range(len(w_t2i))]
    neg_text = [torch.multinomial(w_i2t[b], 1).item() for b in range(len(w_i2t))]
    return neg_text, neg_image


def references() -> dict:
    img_all, txt_all, ids_all, logits_all, labels_all = global_batch()
    ref = {}
    for grad, with_ids in CASES:
        key = f"grad{grad}_ids{with_ids}"
        img, txt = img_all.clone().requires_grad_(True), txt_all.clone().requires_grad_(True)
        temp = torch.tensor(0.3, requires_grad=True)
        ids = ids_all if with_ids else None
        loss, sim_i2t, sim_t2i = reference_itc(img, txt, temp, ids, bool(grad))
        loss.backward()
        ref[f"{key}_loss"], ref[f"{key}_img_grad"], ref[f"{key}_txt_grad"] = loss.detach(), img.grad, txt.grad
        ref[f"{key}_temp_grad"] = temp.grad
        torch.manual_seed(123)
        neg_text, neg_image = lavis_negatives(sim_i2t, sim_t2i, ids)
        ref[f"{key}_neg_text"], ref[f"{key}_neg_image"] = torch.tensor(neg_text), torch.tensor(neg_image)
        ref[f"{key}_after"] = torch.rand(3)
    logits = logits_all.clone().requires_grad_(True)
    flat = labels_all.flatten()
    keep = flat != -100
    # label-smoothed CE written out, mean over the labelled tokens of the whole batch
    logp = torch.log_softmax(logits.flatten(0, 1)[keep], -1)
    loss = (-(0.9 * logp.gather(1, flat[keep, None]).squeeze(1)) - 0.1 * logp.mean(1)).mean()
    loss.backward()
    ref["tokens_loss"], ref["tokens_grad"] = loss.detach(), logits.grad
    return ref


def combine(ranks: list[dict]) -> dict:
    """What DDP makes of the ranks' results: averaged losses, each row's gradient / W."""
    w = len(ranks)
    out = {}
    for key in ranks[0]:
        parts = [r[key] for r in ranks]
        if key.endswith(("_loss", "_temp_grad")):
            out[key] = sum(parts) / w
        elif key.endswith("_grad"):
            out[key] = torch.cat(parts) / w
        elif key.endswith("_after"):
            out[key] = parts[0]  # rank 0's generator carries on like the single process
        else:
            out[key] = torch.cat(parts)
    return out


def assert_matches(got: dict, ref: dict) -> None:
    for key, want in ref.items():
        if want.dtype.is_floating_point:
            torch.testing.assert_close(got[key], want, rtol=1e-5, atol=1e-6, msg=key)
        else:
            assert torch.equal(got[key], want), (key, got[key], want)


# -- the tests ---------------------------------------------------------------------------------
def test_one_process_matches_the_references():
    assert_matches(run([8], rank_seed=123), references())


def test_lavis_gradients_differ_from_the_full_gradient():
    """The two modes are not the same thing (so the tests above can tell them apart)."""
    ref = references()
    for side in ("img", "txt"):  # (the temperature's gradient is the same in both)
        assert not torch.allclose(ref[f"grad0_ids0_{side}_grad"], ref[f"grad1_ids0_{side}_grad"], atol=1e-4)
    assert torch.equal(ref["grad0_ids0_loss"], ref["grad1_ids0_loss"])


def test_batched_draw_consumes_the_generator_like_lavis_loop():
    torch.manual_seed(5)
    sim = torch.randn(40, 40) * 3
    torch.manual_seed(7)
    want = lavis_negatives(sim, sim.t().contiguous())
    torch.manual_seed(7)
    neg_text, neg_image = losses.hard_negative_indices(sim, sim.t().contiguous())
    assert (neg_text.tolist(), neg_image.tolist()) == want


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_losses")
    proc = torchrun(SCRIPT, str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("split", ["even", "uneven"])
def test_two_gloo_processes_match_the_references(two_ranks, split):
    ranks = [torch.load(two_ranks / split / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert_matches(combine(ranks), references())
