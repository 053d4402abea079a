"""Retrieval scores of a real tiny BLIP-2 against LAVIS's compute_sim_matrix loops run on
transformers' modules (bench/lavis_retrieval.py), each pair scored once, and 2 gloo
processes against 1 with only scores crossing ranks."""
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from bench_refs import bench_module
from script_env import torchrun
from tiny_models import TINY_CORPUS, build_tiny_hf_blip2_retrieval
from lavislike.models import from_hf
from lavislike.tasks.retrieval import RetrievalTask, RetrievalTaskConfig, retrieval_scores
from lavislike.errors import ConfigError

SCRIPT = Path(__file__).parent / "retrieval_ddp_script.py"
LAVIS = bench_module("lavis_retrieval")
N_IMAGES, PER_IMAGE, K = 6, 3, 4


class RetrievalSet(torch.utils.data.Dataset):
    def __init__(self, pixels, texts):
        self.pixels, self.text = pixels, texts
        self.img2txt = {i: list(range(i * PER_IMAGE, (i + 1) * PER_IMAGE)) for i in range(len(pixels))}
        self.txt2img = {t: t // PER_IMAGE for t in range(len(texts))}

    def __len__(self):
        return self.pixels.shape[0]

    def __getitem__(self, i):
        return {"image": self.pixels[i], "index": i}


def _setup(folder: Path, tokenizer_dir: Path):
    hf = build_tiny_hf_blip2_retrieval(folder / "hf", tokenizer_dir, seed=3)
    size = hf.config.vision_config.image_size
    pixels = torch.randn(N_IMAGES, 3, size, size, generator=torch.Generator().manual_seed(2))
    # every caption distinct: two equal captions tie in every image's ranking, and which of
    # them makes the top k is then decided by float noise (it differed on an AVX2 CPU)
    texts = [TINY_CORPUS[t % 10] + " and a dog" * (t // 10) for t in range(N_IMAGES * PER_IMAGE)]
    model = from_hf(folder / "hf")
    with torch.no_grad():
        sim = model.itc_similarity(model.retrieval_image_embeds(pixels)["feat"],
                                   model.retrieval_text_embeds(texts)["feat"])
    gap = LAVIS.topk_margin(sim, K)
    assert gap > 1e-4, f"the top-{K} candidates are chosen by float noise (ITC gap {gap:.1e})"
    return hf, model, pixels, texts


def _count_pairs(model) -> list:
    """Record how many pairs each ITM forward of ``model`` scores."""
    scored, plain = [], model.itm_scores
    model.itm_scores = lambda emb, ids, *a, **kw: scored.append(ids.shape[0]) or plain(emb, ids, *a, **kw)
    return scored


@pytest.mark.parametrize("fusion", ["itm+itc", "itm"])
def test_scores_equal_lavis_loops_and_each_pair_is_scored_once(tmp_path, tiny_bert_tokenizer_dir, fusion):
    hf, model, pixels, texts = _setup(tmp_path, tiny_bert_tokenizer_dir)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ref_i2t, ref_t2i = LAVIS.lavis_compute_sim_matrix(hf, tok, pixels, texts, K, image_batch=4, fusion=fusion)

    scored = _count_pairs(model)
    loader = DataLoader(RetrievalSet(pixels, texts), batch_size=4)
    i2t, t2i = retrieval_scores(model, loader, RetrievalTaskConfig(k_test=K, itm_batch_size=7, fusion=fusion))

    torch.testing.assert_close(i2t, ref_i2t, rtol=0, atol=1e-5)
    torch.testing.assert_close(t2i, ref_t2i, rtol=0, atol=1e-5)
    union = ((ref_i2t != -100) | (ref_t2i.t() != -100)).sum().item()
    assert sum(scored) == union < (N_IMAGES + len(texts)) * K  # the overlap is scored once


def test_task_defaults_are_lavis_and_bad_keys_fail():
    task = RetrievalTask({})
    assert task.cfg.fusion == "itm+itc" and task.cfg.agg_metric == "txt_r_mean"
    with pytest.raises(ConfigError, match="run.agg_metric.*Did you mean 'txt_r_mean'"):
        RetrievalTask({"agg_metric": "txt_rmean"})
    with pytest.raises(ConfigError, match="run.fusion"):
        RetrievalTask({"fusion": "itc"})


def test_two_gloo_processes_match_one_and_gather_only_scores(tmp_path, tiny_bert_tokenizer_dir):
    hf, model, pixels, texts = _setup(tmp_path, tiny_bert_tokenizer_dir)
    torch.save({"pixels": pixels, "texts": texts}, tmp_path / "data.pt")
    two = torchrun(SCRIPT, str(tmp_path), str(tmp_path / "two"), timeout=180)
    assert two.returncode == 0, two.stderr[-3000:]
    # one process: here, with _setup's model
    scored = _count_pairs(model)
    i2t, t2i = retrieval_scores(model, DataLoader(RetrievalSet(pixels, texts), batch_size=2),
                                RetrievalTaskConfig(k_test=K, itm_batch_size=8))
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for got in ranks:
        torch.testing.assert_close(got["i2t"], i2t, rtol=0, atol=1e-6)
        torch.testing.assert_close(got["t2i"], t2i, rtol=0, atol=1e-6)
    ref = {"pairs": sum(scored)}
    # the ranks split the pairs between them, each scored once
    assert ranks[0]["pairs"] > 0 and ranks[1]["pairs"] > 0
    assert ranks[0]["pairs"] + ranks[1]["pairs"] == ref["pairs"]
    # the image encoder's output (tokens x width) never crossed ranks; the ITC features did
    vision = hf.config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    shapes = [s for got in ranks for s in got["gathered"]]
    assert not any(s[-2:] == [tokens, vision.hidden_size] for s in shapes)
    assert any(s[-2:] == [hf.config.num_query_tokens, hf.config.image_text_hidden_size] for s in shapes)
