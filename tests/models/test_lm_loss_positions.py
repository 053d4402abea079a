"""The LLM adapters' training loss is transformers' own loss, bit for bit, while the
vocabulary-wide LM head runs only where a next token is labelled (not on the soft prompt
or the padding)."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from llm_tiny import save_tiny_llm
from lavislike.models.llms import CausalLM, CausalLMConfig, Seq2SeqLM, Seq2SeqLMConfig

TARGETS = [" a red car on the road", " two", " a cat and a dog and a bird"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("llms")
    return {k: save_tiny_llm(root / k, k, seed=i) for i, k in enumerate(("opt", "llama", "t5"))}


def _capture(llm):
    """Record the keyword arguments of every call of the HF model (and still run it)."""
    calls = []
    forward = llm.model.forward

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return forward(*args, **kwargs)

    llm.model.forward = spy
    return calls


def _head_rows(llm):
    rows = []
    llm.model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(i[0].shape[:-1].numel()))
    return rows


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_causal_loss_is_transformers_loss_bit_for_bit_on_labelled_positions(folders, kind):
    llm = CausalLM.from_config(OmegaConf.structured(CausalLMConfig(path=str(folders[kind]))))
    calls, rows = _capture(llm), _head_rows(llm)
    # transformers computes the same loss from all positions' logits and the labels:
    # the soft prompt and padding unlabelled, every text token a target (no prefix)
    ids, mask = llm.tokenize([t + llm.end_of_text for t in TARGETS])
    labels = torch.cat([torch.full((3, 4), -100), ids.masked_fill(mask == 0, -100)], 1)
    labelled = int((labels[:, 1:] != -100).sum())
    for seed in range(3):  # a mean over other rows than transformers' rounds differently now and then
        soft = torch.randn(3, 4, llm.hidden_size, generator=torch.Generator().manual_seed(seed))
        calls.clear(), rows.clear()
        loss = llm.lm_loss(soft, [""] * 3, TARGETS)
        assert rows == [labelled] and labelled < labels.numel()  # the head saw the labelled rows only
        seen = calls[0]
        ref = llm.model(inputs_embeds=seen["inputs_embeds"], attention_mask=seen["attention_mask"], labels=labels)
        assert torch.equal(loss, ref.loss), seed


def test_seq2seq_loss_is_transformers_loss_bit_for_bit(folders):
    llm = Seq2SeqLM.from_config(OmegaConf.structured(Seq2SeqLMConfig(path=str(folders["t5"]))))
    soft = torch.randn(3, 4, llm.hidden_size, generator=torch.Generator().manual_seed(0))
    calls = _capture(llm)
    loss = llm.lm_loss(soft, ["question: what?", "", "caption:"], TARGETS)
    ids, mask = llm.tokenize(TARGETS)
    seen = calls[0]
    ref = llm.model(inputs_embeds=seen["inputs_embeds"], attention_mask=seen["attention_mask"],
                    decoder_attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    assert torch.equal(loss, ref.loss)
