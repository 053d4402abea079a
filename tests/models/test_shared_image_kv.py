"""Shared cross-attention keys/values (``image_kv`` / ``image_index``) against transformers.

Scoring many pairs that read few distinct images projects each image's keys/values once;
the scores and the gradients must still be those of transformers' ITM on one image per pair.
"""
from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from tiny_models import build_tiny_hf_blip2_retrieval
from lavislike.models import from_hf
from lavislike.models.qformer import _PickRows

TEXTS = ["a cat sitting on a red mat", "two dogs running in the park at night", "a bus",
         "a bird flying over the blue sea", "a man riding a horse"]


def _hf_itm(hf, vision, ids, mask):
    """transformers' ITM logits (K, 2) for image features ``vision`` (K, P, C)."""
    queries = hf.query_tokens.expand(vision.shape[0], -1, -1)
    att = torch.cat([torch.ones(queries.shape[:-1], dtype=torch.long), mask], 1)
    out = hf.qformer(query_embeds=hf.embeddings(input_ids=ids, query_embeds=queries), query_length=queries.shape[1],
                     attention_mask=att, encoder_hidden_states=vision,
                     encoder_attention_mask=torch.ones(vision.shape[:-1], dtype=torch.long))
    return hf.itm_head(out.last_hidden_state[:, : queries.shape[1]]).mean(1)


def _setup(tmp_path, tokenizer_dir):
    folder = tmp_path / "hf"
    hf = build_tiny_hf_blip2_retrieval(folder, tokenizer_dir, seed=5)
    model = from_hf(folder)
    size = hf.config.vision_config.image_size
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    tok = AutoTokenizer.from_pretrained(str(folder))
    enc = tok(TEXTS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        vision = hf.vision_model(pixel_values=pixels).last_hidden_state
    return hf, model, pixels, vision, enc.input_ids, enc.attention_mask


def test_itm_scores_with_image_index_match_transformers(tmp_path, tiny_bert_tokenizer_dir):
    hf, model, pixels, vision, ids, mask = _setup(tmp_path, tiny_bert_tokenizer_dir)
    embeds = model.retrieval_image_embeds(pixels)["embeds"]
    index = torch.tensor([2, 0, 2, 1, 0])  # several pairs per image, unsorted
    with torch.no_grad():
        expected = _hf_itm(hf, vision[index], ids, mask)[:, 1]
    got = model.itm_scores(embeds, ids, mask, image_index=index)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # one image for every pair (the expanded, copy-free path)
    single = torch.zeros(len(TEXTS), dtype=torch.long)
    with torch.no_grad():
        expected = _hf_itm(hf, vision[1:2].expand(len(TEXTS), -1, -1), ids, mask)[:, 1]
    got = model.itm_scores(embeds[1:2], ids, mask, image_index=single)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # each text's image-independent work done once (text states), the pairs read them
    texts = torch.tensor([4, 1, 4, 0, 1])
    with torch.no_grad():
        expected = _hf_itm(hf, vision[index], ids[texts], mask[texts])[:, 1]
    states = model.itm_text_states(ids, mask)
    got = model.itm_scores(embeds, ids[texts], mask[texts], image_index=index, text_states=states, text_index=texts)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_shared_image_kv_gradients_match_transformers(tmp_path, tiny_bert_tokenizer_dir):
    hf, model, pixels, vision, ids, mask = _setup(tmp_path, tiny_bert_tokenizer_dir)
    index = torch.tensor([0, 1, 2, 0, 1])
    model.zero_grad()  # eval mode: the tiny models have dropout
    embeds = model.encode_image(pixels)
    image_kv = model.qformer.cross_kv(embeds)
    # the ITC image pass and ITM both read the same projected keys/values
    _, feats = model._image_pass(embeds, image_kv=image_kv)
    logits = model.itm_logits(None, ids, mask, image_kv=image_kv, image_index=index)
    (logits.square().sum() + feats.sum()).backward()

    hf.zero_grad()
    queries = hf.query_tokens.expand(3, -1, -1)
    q_out = hf.qformer(query_embeds=queries, encoder_hidden_states=vision,
                       encoder_attention_mask=torch.ones(vision.shape[:-1], dtype=torch.long)).last_hidden_state
    ref_feats = torch.nn.functional.normalize(hf.vision_projection(q_out), dim=-1)
    ref_logits = _hf_itm(hf, vision[index], ids, mask)
    (ref_logits.square().sum() + ref_feats.sum()).backward()

    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    ours_key = model.qformer.layers[0].cross_attn.key.weight.grad
    ref_key = hf.qformer.encoder.layer[0].crossattention.attention.key.weight.grad
    torch.testing.assert_close(ours_key, ref_key, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.qformer.query_tokens.grad, hf.query_tokens.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", ["keys", "heads", "projection"])
def test_picked_keys_gradient_is_index_selects(layout):
    """The pairs' keys/values gathered from the images' (``_PickRows``) give back the gradient
    ``index_select`` gives, bit for bit, whatever layout the gradient arrives in: ``keys``
    (the score product's backward: last two dimensions transposed), ``heads`` (contiguous
    in head layout), ``projection`` (the (B, N, heads, d) layout of the projection)."""
    g = torch.Generator().manual_seed(0)
    index = torch.tensor([0, 1, 2, 3, 1, 3, 0, 2, 0, 1, 2, 3])
    images = torch.randn(4, 7, 24, generator=g, requires_grad=True)
    keys = images.view(4, 7, 3, 8).transpose(1, 2)
    grad = {"keys": torch.randn(12, 3, 8, 7, generator=g).transpose(2, 3),
            "heads": torch.randn(12, 3, 7, 8, generator=g),
            "projection": torch.randn(12, 7, 3, 8, generator=g).transpose(1, 2)}[layout]
    expected, = torch.autograd.grad(keys.index_select(0, index), images, grad)
    picked = _PickRows.apply(keys, index)
    assert torch.equal(picked, keys.index_select(0, index))
    got, = torch.autograd.grad(picked, images, grad)
    assert torch.equal(got, expected)
