"""Stage-1 losses against hand computation; freezing; the real-size parameter count."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tiny_models import tiny_stage1_overrides
from lavislike.config import model_config
from lavislike.models import build_model, load_model
from lavislike.models.losses import hard_negative_indices, itc_loss

TEXTS = ["a cat sitting on a red mat", "two dogs running"]


def _ce_smoothed(logits: list[float], target: int, eps: float) -> float:
    """Label-smoothed cross-entropy of one row, written out."""
    m = max(logits)
    logz = m + math.log(sum(math.exp(x - m) for x in logits))
    nll = [logz - x for x in logits]
    return (1 - eps) * nll[target] + eps * sum(nll) / len(nll)


def _tiny(tokenizer_dir):
    torch.manual_seed(0)
    model = load_model("blip2", "tiny", **tiny_stage1_overrides(tokenizer_dir))
    with torch.no_grad():
        model.temp.fill_(0.2)
    return model.train()


def test_itc_itm_itg_match_hand_computation(tiny_bert_tokenizer_dir):
    model = _tiny(tiny_bert_tokenizer_dir)
    images = torch.randn(2, 3, 32, 32)
    out = model({"image": images, "text_input": TEXTS})

    with torch.no_grad():
        emb = model.encode_image(images)
        q = model.qformer.query_outputs(emb)
        img = F.normalize(model.vision_proj(q), dim=-1)  # (2, Q, D)
        ids, mask = model.tokenize(TEXTS)
        cls = model.qformer(input_ids=ids, text_mask=mask).last_hidden_state[:, 0]
        txt = F.normalize(model.text_proj(cls), dim=-1)
        temp = model.temp.item()
        sim = [[max(float(img[i, k] @ txt[j]) for k in range(img.shape[1])) / temp for j in range(2)]
               for i in range(2)]
        loss_i2t = sum(_ce_smoothed(sim[i], i, 0.1) for i in range(2)) / 2
        loss_t2i = sum(_ce_smoothed([sim[i][j] for i in range(2)], j, 0.1) for j in range(2)) / 2
        itc = (loss_i2t + loss_t2i) / 2

        # with two samples the only negative of each sample is the other one
        def itm_logits(i_img, i_txt):
            return model.itm_logits(emb[i_img:i_img + 1], ids[i_txt:i_txt + 1], mask[i_txt:i_txt + 1])[0].tolist()

        pairs = [(0, 0, 1), (1, 1, 1), (1, 0, 0), (0, 1, 0), (0, 1, 0), (1, 0, 0)]  # (image, text, label)
        itm = sum(_ce_smoothed(itm_logits(a, b), y, 0.0) for a, b, y in pairs) / len(pairs)

        dec = ids.clone()
        dec[:, 0] = model.tokenizer.bos_token_id
        queries = model.qformer.query_tokens.expand(2, -1, -1)
        joint = model.qformer(query_embeds=queries, input_ids=dec, text_mask=mask, image_embeds=emb, causal=True)
        logits = model.qformer.lm_logits(joint.last_hidden_state[:, queries.shape[1]:])
        terms = [
            _ce_smoothed(logits[b, t].tolist(), int(dec[b, t + 1]), 0.1)
            for b in range(2) for t in range(dec.shape[1] - 1) if mask[b, t + 1]
        ]
        itg = sum(terms) / len(terms)

    assert math.isclose(out["loss_itc"].item(), itc, rel_tol=1e-5, abs_tol=1e-5)
    assert math.isclose(out["loss_itm"].item(), itm, rel_tol=1e-5, abs_tol=1e-5)
    assert math.isclose(out["loss_lm"].item(), itg, rel_tol=1e-5, abs_tol=1e-5)
    assert math.isclose(out["loss"].item(), itc + itm + itg, rel_tol=1e-5)


def test_itc_soft_targets_with_image_ids():
    torch.manual_seed(1)
    img = F.normalize(torch.randn(3, 2, 4), dim=-1)
    txt = F.normalize(torch.randn(3, 4), dim=-1)
    ids = torch.tensor([7, 7, 9])
    loss, _, _ = itc_loss(img, txt, torch.tensor(0.5), ids)
    sim = [[max(float(img[i, k] @ txt[j]) for k in range(2)) / 0.5 for j in range(3)] for i in range(3)]
    pos = [[1.0 if ids[i] == ids[j] else 0.0 for j in range(3)] for i in range(3)]

    def soft_ce(row, p):
        m = max(row)
        logz = m + math.log(sum(math.exp(x - m) for x in row))
        target = [0.9 * pj / sum(p) + 0.1 / 3 for pj in p]
        return sum(t * (logz - x) for t, x in zip(target, row))

    i2t = sum(soft_ce(sim[i], pos[i]) for i in range(3)) / 3
    t2i = sum(soft_ce([sim[i][j] for i in range(3)], [pos[i][j] for i in range(3)]) for j in range(3)) / 3
    assert math.isclose(loss.item(), (i2t + t2i) / 2, rel_tol=1e-5)


def test_hard_negatives_never_positive():
    torch.manual_seed(0)
    sim = torch.randn(4, 4) * 3
    ids = torch.tensor([1, 1, 2, 3])
    for _ in range(50):
        neg_text, neg_image = hard_negative_indices(sim, sim.t().contiguous(), ids)
        assert all(ids[neg_text] != ids) and all(ids[neg_image] != ids)
    neg_text, neg_image = hard_negative_indices(sim[:2, :2], sim[:2, :2], None)
    assert neg_text.tolist() == [1, 0] and neg_image.tolist() == [1, 0]


def test_frozen_encoder_gets_no_grad_and_stays_in_eval(tiny_bert_tokenizer_dir):
    model = _tiny(tiny_bert_tokenizer_dir)
    model.train()
    assert model.training and not model.image_encoder.training
    assert all(not m.training for m in model.image_encoder.modules())
    model({"image": torch.randn(2, 3, 32, 32), "text_input": TEXTS})["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.image_encoder.parameters())
    assert model.ln_vision.weight.grad is not None and model.qformer.query_tokens.grad is not None
    assert model.temp.grad is not None
    trainable = model.trainable_state_dict()
    assert not any(k.startswith("image_encoder.") for k in trainable)
    assert "qformer.query_tokens" in trainable


def test_pretrain_trainable_parameter_count_on_meta():
    cfg = model_config("blip2", "pretrain")
    model = build_model(cfg, torch.device("cpu"), meta=True)
    assert model.qformer.query_tokens.is_meta
    assert model.qformer.query_tokens.shape == (1, 32, 768)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert 186_000_000 < trainable < 189_500_000, trainable  # paper: ~188M with the queries
    assert 980_000_000 < frozen < 1_000_000_000, frozen  # EVA ViT-g, 39 blocks


def test_temperature_is_not_clamped_unless_asked(tiny_bert_tokenizer_dir):
    """LAVIS's BLIP-2 leaves the learned temperature alone; BLIP's clamp is an option."""
    batch = {"image": torch.randn(2, 3, 32, 32), "text_input": TEXTS}
    model = _tiny(tiny_bert_tokenizer_dir)
    with torch.no_grad():
        model.temp.fill_(0.7)
    model(batch)
    assert model.temp.item() == pytest.approx(0.7)
    torch.manual_seed(0)
    clamped = load_model("blip2", "tiny", **tiny_stage1_overrides(tiny_bert_tokenizer_dir, itc_clamp_temp=True))
    with torch.no_grad():
        clamped.temp.fill_(0.7)
    clamped.train()(batch)
    assert clamped.temp.item() == pytest.approx(0.5)


def test_itc_gather_grad_changes_the_gradients_not_the_loss(tiny_bert_tokenizer_dir):
    """``itc_gather_grad`` reaches the loss: same forward, other projection gradients
    (the gradients themselves are checked against references in tests/runners/test_ddp_losses.py)."""
    batch = {"image": torch.randn(3, 3, 32, 32), "text_input": TEXTS + ["a bird flying over the sea"]}
    grads, values = [], []
    for option in (False, True):
        torch.manual_seed(0)
        model = load_model("blip2", "tiny", **tiny_stage1_overrides(tiny_bert_tokenizer_dir, itc_gather_grad=option))
        out = model.train()(batch)
        out["loss_itc"].backward()
        values.append(out["loss_itc"].item())
        grads.append(model.vision_proj.weight.grad.clone())
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    assert not torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize("question_aware", [False, True])
def test_stage2_trains_every_trainable_parameter(question_aware):
    """DDP refuses parameters that get no gradient ("parameters not used"): stage 2 with
    ``qformer.text_input: true`` (text parts built, no question-aware queries) or with an
    LM head must freeze what it never runs - and keep training what it does run."""
    from lavislike.models.blip2_llm import Blip2LLM

    torch.manual_seed(0)
    model = load_model("blip2_opt", "tiny", load_pretrained=False, qformer_text_input=question_aware,
                       qformer={"text_input": True, "lm_head": True})
    assert isinstance(model, Blip2LLM)
    batch = {"image": torch.randn(2, 3, 32, 32), "text_input": ["what is it?", "how many?"],
             "text_output": ["a cat", "two"]}
    model.train()(batch)["loss"].backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert [n for n, p in trainable.items() if p.grad is None] == []
    words = "qformer.embeddings.word_embeddings.weight"
    assert (words in trainable) == question_aware and "llm_proj.weight" in trainable
