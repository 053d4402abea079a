import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from lavislike.tasks.retrieval import RetrievalTask
from lavislike.tasks.retrieval_metrics import retrieval_recall


def brute_force(scores_i2t, scores_t2i, img2txt, txt2img):
    out = {}
    ranks = []
    for i, row in enumerate(scores_i2t):
        best = min(sum(1 for s in row if s > row[t]) for t in img2txt[i])
        ranks.append(best)
    ranks_t = [sum(1 for s in row if s > row[txt2img[t]]) for t, row in enumerate(scores_t2i)]
    for name, rk in (("txt", ranks), ("img", ranks_t)):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * sum(r < k for r in rk) / len(rk)
    return out


def test_recall_matches_brute_force_on_random_scores():
    rng = np.random.default_rng(0)
    n_img, per = 30, 3
    img2txt = {i: [i * per + j for j in range(per)] for i in range(n_img)}
    txt2img = {t: t // per for t in range(n_img * per)}
    s_i2t = rng.normal(size=(n_img, n_img * per))
    s_i2t[np.arange(n_img), np.arange(n_img) * per] += 1.5  # make recall non-trivial
    s_t2i = rng.normal(size=(n_img * per, n_img)) + 0.8 * s_i2t.T
    got = retrieval_recall(s_i2t, s_t2i, img2txt, txt2img)
    ref = brute_force(s_i2t, s_t2i, img2txt, txt2img)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v)
    assert 0 < got["txt_r1"] < 100 and 0 < got["img_r5"] < 100
    assert got["r_mean"] == pytest.approx(np.mean([ref[k] for k in ref]))


class ToyRetrievalModel(nn.Module):
    """Deterministic features; ITM score = a fixed bilinear form of image/text embeddings."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = nn.Parameter(torch.randn(4, 4, generator=g))
        self.vocab = torch.randn(100, 4, generator=g)

    def retrieval_image_embeds(self, images):
        emb = images.view(images.shape[0], 2, 4)
        feat = nn.functional.normalize(emb @ self.proj, dim=-1)
        return {"feat": feat, "embeds": emb}

    def retrieval_text_embeds(self, texts):
        ids = torch.tensor([[int(w) for w in t.split()] for t in texts])
        feat = nn.functional.normalize(self.vocab[ids].mean(1), dim=-1)
        return {"feat": feat, "input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def itc_similarity(self, image_feat, text_feat):
        return torch.einsum("iqd,td->itq", image_feat, text_feat).max(-1).values

    def itm_scores(self, image_embeds, input_ids, attention_mask):
        assert image_embeds.shape[0] <= 7  # batched in chunks of itm_batch_size
        txt = self.vocab[input_ids].mean(1)
        return torch.tanh((image_embeds.mean(1) * txt).sum(-1))


class ToyRetrievalData(Dataset):
    def __init__(self, n=12, per=2):
        g = torch.Generator().manual_seed(1)
        self.images = torch.randn(n, 8, generator=g)
        self.text = [f"{(3 * i + j) % 100} {(7 * i + 5 * j) % 100}" for i in range(n) for j in range(per)]
        self.img2txt = {i: [i * per + j for j in range(per)] for i in range(n)}
        self.txt2img = {t: t // per for t in range(n * per)}

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "index": i}


@pytest.mark.parametrize("fusion", ["itm", "itm+itc"])
def test_task_reranks_topk_like_a_per_query_loop(fusion):
    model, ds = ToyRetrievalModel(), ToyRetrievalData()
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=default_collate)
    task = RetrievalTask({"k_test": 10, "itm_batch_size": 7, "fusion": fusion})
    got = task.evaluate(model, loader, split="test")

    # independent reference: one query at a time
    with torch.no_grad():
        img = model.retrieval_image_embeds(ds.images)
        txt = model.retrieval_text_embeds(ds.text)
        sim = model.itc_similarity(img["feat"], txt["feat"])
        i2t = torch.full(sim.shape, -100.0)
        for i in range(sim.shape[0]):
            v, idx = sim[i].topk(10)
            s = torch.stack([model.itm_scores(img["embeds"][i : i + 1], txt["input_ids"][j : j + 1], None)[0]
                             for j in idx])
            i2t[i, idx] = s + (v if fusion == "itm+itc" else 0)
        t2i = torch.full(sim.t().shape, -100.0)
        for t in range(sim.shape[1]):
            v, idx = sim[:, t].topk(10)
            s = torch.stack([model.itm_scores(img["embeds"][j : j + 1], txt["input_ids"][t : t + 1], None)[0]
                             for j in idx])
            t2i[t, idx] = s + (v if fusion == "itm+itc" else 0)
    ref = brute_force(i2t.numpy(), t2i.numpy(), ds.img2txt, ds.txt2img)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v)
    assert got["agg_metrics"] == got["txt_r_mean"]  # LAVIS picks checkpoints by image->text recall


def test_image_batches_pack_whole_images_up_to_the_batch_size():
    from lavislike.tasks.retrieval import image_batches

    img = torch.tensor([0] * 3 + [1] * 2 + [2] * 9 + [3] * 1 + [4] * 4)
    got = image_batches(img, 5)
    # image 2 (9 pairs) is split; its last 4 share a batch with image 3; image 4 alone
    assert got == [(0, 5), (5, 10), (10, 15), (15, 19)]
    covered = torch.cat([torch.arange(s, e) for s, e in got])
    assert torch.equal(covered, torch.arange(img.numel())) and max(e - s for s, e in got) <= 5
