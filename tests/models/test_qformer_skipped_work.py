"""Work the Q-Former skips because nothing reads it, against the plain full forward.

* ``output_rows``: the last layer computes only the rows that are read (ITM's queries, the
  ITC text pass's [CLS]); values and gradients must be those of the full pass.
* ``text_states``: the part of the ``[queries; text]`` pass that sees no image (layer 0's
  self-attention, layer 0's text FFN) is computed once per text and reused for every image.
"""
from __future__ import annotations

import pytest
import torch

from lavislike.models.qformer import QFormer, QFormerConfig, QFormerLayer

IDS = torch.tensor([[2, 7, 9, 3, 0, 0], [2, 8, 11, 12, 13, 3], [2, 5, 3, 0, 0, 0]])
MASK = (IDS != 0).long()


def _qformer(layers: int, freq: int, **kw) -> QFormer:
    torch.manual_seed(0)
    cfg = QFormerConfig(num_query_token=3, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=24, vocab_size=50, max_position_embeddings=20, cross_attention_freq=freq,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)
    qf = QFormer(cfg, encoder_width=8)
    with torch.no_grad():  # zero-initialised biases would hide a row mix-up in them
        for p in qf.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    return qf


def _full(qf: QFormer, image, image_mask=None, ids=IDS, mask=MASK, image_index=None) -> torch.Tensor:
    """The plain pass: every row of every layer."""
    queries = qf.query_tokens.expand(ids.shape[0], -1, -1)
    return qf(query_embeds=queries, input_ids=ids, text_mask=mask, image_embeds=image, image_mask=image_mask,
              image_index=image_index).last_hidden_state


def _grads(qf: QFormer, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in qf.parameters() if p.requires_grad]
    return [torch.zeros_like(p) if g is None else g
            for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))]


@pytest.mark.parametrize("layers,freq,ckpt", [(3, 2, False), (2, 1, False), (1, 1, False), (3, 2, True)])
def test_output_rows_values_and_gradients_equal_the_full_pass(layers, freq, ckpt):
    qf = _qformer(layers, freq, gradient_checkpointing=ckpt).train()
    image = torch.randn(3, 5, 8)
    image_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 1, 1]])
    q = qf.cfg.num_query_token

    full = _full(qf, image, image_mask)[:, :q]
    got = qf.query_outputs(image, IDS, MASK, image_mask=image_mask)
    assert got.shape == full.shape
    torch.testing.assert_close(got, full, atol=1e-6, rtol=1e-5)
    weight = torch.randn(16, generator=torch.Generator().manual_seed(0))
    for g_ours, g_full in zip(_grads(qf, (got * weight).sum()), _grads(qf, (full * weight).sum())):
        torch.testing.assert_close(g_ours, g_full, atol=1e-5, rtol=1e-4)

    # the ITC text pass reads only [CLS]
    full = qf(input_ids=IDS, text_mask=MASK).last_hidden_state[:, :1]
    got = qf(input_ids=IDS, text_mask=MASK, output_rows=1).last_hidden_state
    assert got.shape == full.shape
    torch.testing.assert_close(got, full, atol=1e-6, rtol=1e-5)
    for g_ours, g_full in zip(_grads(qf, got.sin().sum()), _grads(qf, full.sin().sum())):
        torch.testing.assert_close(g_ours, g_full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layers,freq", [(3, 2), (2, 1), (1, 1)])
def test_text_states_reused_across_images_equal_the_full_pass_per_pair(layers, freq):
    qf = _qformer(layers, freq).eval()
    images = torch.randn(2, 5, 8)
    image_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    text_index = torch.tensor([1, 0, 2, 1, 0])
    image_index = torch.tensor([0, 0, 1, 1, 1])
    q = qf.cfg.num_query_token
    with torch.no_grad():
        states = qf.text_states(IDS, MASK)
        full = _full(qf, images, image_mask, IDS[text_index], MASK[text_index], image_index)[:, :q]
        got = qf.query_outputs_from_states(states, MASK[text_index], text_index, images, image_mask,
                                           image_index=image_index)
        torch.testing.assert_close(got, full, atol=1e-6, rtol=1e-5)
        # shared cross-attention keys/values, and texts cut to their batch's width
        sel = torch.tensor([1, 2, 4])  # texts 0, 2, 0: nothing but padding after 4 tokens
        width = 4
        full = _full(qf, images, None, IDS[text_index[sel], :width], MASK[text_index[sel], :width],
                     image_index[sel])[:, :q]
        got = qf.query_outputs_from_states(states, MASK[text_index[sel], :width], text_index[sel],
                                           image_kv=qf.cross_kv(images), image_index=image_index[sel])
        torch.testing.assert_close(got, full, atol=1e-6, rtol=1e-5)


def test_stage1_losses_and_gradients_equal_those_of_full_passes(tiny_bert_tokenizer_dir, monkeypatch):
    from tiny_models import tiny_stage1_overrides
    from lavislike.models import load_model

    torch.manual_seed(0)
    model = load_model("blip2", "tiny", **tiny_stage1_overrides(tiny_bert_tokenizer_dir)).eval()  # no dropout
    samples = {"image": torch.randn(3, 3, 32, 32), "image_id": torch.arange(3),
               "text_input": ["a cat sitting on a red mat", "two dogs", "a bird flying over the blue sea"]}
    params = [p for p in model.parameters() if p.requires_grad]

    def run():
        torch.manual_seed(1)  # the same hard negatives
        out = model(samples)
        return out, torch.autograd.grad(out["loss"], params, allow_unused=True)

    ours, g_ours = run()
    plain = QFormerLayer.forward

    def every_row(self, *args, rows=None):  # rows is the 10th argument: drop it
        return plain(self, *args[:8])

    monkeypatch.setattr(QFormerLayer, "forward", every_row)
    ref, g_ref = run()
    for key in ("loss_itc", "loss_itm", "loss_lm"):
        torch.testing.assert_close(ours[key], ref[key], atol=1e-6, rtol=1e-5)
    assert sum(g is not None for g in g_ours) == sum(g is not None for g in g_ref) > 0
    for a, b in zip(g_ours, g_ref):
        if b is not None:  # as above: summation order differs with the thread count (2.6e-6 seen)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
