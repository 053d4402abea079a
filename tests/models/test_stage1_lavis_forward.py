"""The whole stage-1 training forward (ITC + ITM with hard negatives + ITG) of a real tiny
BLIP-2 against LAVIS's ``Blip2Qformer.forward`` re-implemented on transformers' modules
(``bench/lavis_stage1.py``, the full-step reference of ``bench/stage1_step.py``): the same
losses and gradients, the hard negatives drawn from the same seed."""
import pytest
import torch
from transformers import AutoTokenizer

from bench_refs import bench_module
from tiny_models import TINY_CORPUS, build_tiny_hf_blip2_retrieval
from lavislike.models import from_hf
from lavislike.models.blip2 import Blip2Qformer


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_bert_tokenizer_dir):
    folder = tmp_path_factory.mktemp("stage1_lavis")
    hf = build_tiny_hf_blip2_retrieval(folder, tiny_bert_tokenizer_dir, seed=5)
    ours = from_hf(str(folder))
    torch.manual_seed(6)
    with torch.no_grad():  # an LM head far from its initialisation; the decoder stays tied
        head = ours.qformer.lm_head
        for p in (head.transform.weight, head.transform.bias, head.norm.bias, head.decoder.bias):
            p.normal_(0.0, 0.1)
        head.norm.weight.normal_(1.0, 0.1)
        ours.temp.fill_(0.3)
    assert head.decoder.weight is ours.qformer.embeddings.word_embeddings.weight
    ref = bench_module("lavis_stage1")
    ref_head = ref.lm_head_like(hf, head)
    # dropout off on both sides (eval); the losses and their gradients are computed all the same
    return ours.eval(), hf.eval(), ref, ref_head, AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("seed", [0, 1])
def test_stage1_forward_matches_lavis(models, seed):
    ours, hf, ref, ref_head, tok = models
    size = hf.config.vision_config.image_size
    images = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(seed))
    texts = [TINY_CORPUS[(3 * i + seed) % len(TINY_CORPUS)] + " and a dog" * (i % 2) for i in range(5)]

    ours.zero_grad(set_to_none=True)
    torch.manual_seed(100 + seed)
    out = Blip2Qformer.forward(ours, {"image": images, "text_input": texts})
    out["loss"].backward()

    hf.zero_grad(set_to_none=True)
    ref_head.zero_grad(set_to_none=True)
    torch.manual_seed(100 + seed)
    expected = ref.stage1_losses(hf, ref_head, tok, images, texts, float(ours.temp.detach()))
    expected["loss"].backward()

    for key in ("loss_itc", "loss_itm", "loss_lm", "loss"):
        assert out[key].item() == pytest.approx(expected[key].item(), abs=1e-5, rel=1e-5), key
    qf = hf.qformer.encoder.layer
    pairs = [
        (ours.qformer.query_tokens, hf.query_tokens),
        # the tied word embeddings: the lookups of every pass plus the ITG decoder
        (ours.qformer.embeddings.word_embeddings.weight, hf.embeddings.word_embeddings.weight),
        (ours.qformer.layers[0].cross_attn.key.weight, qf[0].crossattention.attention.key.weight),
        (ours.qformer.layers[1].text_ffn.fc1.weight, qf[1].intermediate.dense.weight),
        (ours.qformer.lm_head.transform.weight, ref_head.transform.dense.weight),
    ]
    for mine, theirs in pairs:
        assert theirs.grad.abs().sum() > 0
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-5, rtol=1e-4)
