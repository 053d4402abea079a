"""The demo LLM's text pre-training: documents split at their inner ``</s>``, contexts pooled."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lavislike_demo.fit import LMSizes
from lavislike_demo.text_lm import _document_inputs, _repeats, _split_documents, pretrain_tiny_opt, train_tokenizer

DOCS = [
    "a small red circle on the left on a white background\n",
    "a small red circle on the left on a white background\n</s>Question: what color is the circle? Answer: red\n",
    "a large blue square at the top\n</s>a picture of a large blue square at the top on gray\n",
]
REPEAT = "a large blue square at the top\n</s>a large blue square at the top\n"


def test_split_matches_the_tokenizer_and_pooling_is_the_mean_of_runs(tmp_path):
    tok = train_tokenizer(DOCS * 4, tmp_path / "tok", vocab_size=300)
    split = _split_documents(tok, DOCS)
    for text, (ctx, rest) in zip(DOCS, split):
        # literal documents are exactly what the tokenizer gives (it adds the leading </s>)
        assert [tok.bos_token_id] + ctx + rest == tok(text).input_ids
    assert split[0][0] == [] and split[1][0] and split[1][1][0] == tok.bos_token_id

    embed = torch.nn.Embedding(len(tok), 6)
    ctx, rest = split[1]
    literal, labels = _document_inputs(embed, tok.bos_token_id, ctx, rest, 0)
    assert torch.equal(labels, torch.tensor([-100] + ctx + rest))

    torch.manual_seed(3)
    pooled, plabels = _document_inputs(embed, tok.bos_token_id, ctx, rest, 4)
    assert pooled.shape[0] == 1 + 4 + len(rest)
    assert plabels[:5].tolist() == [-100] * 5 and plabels[5:].tolist() == rest
    assert torch.equal(pooled[5:], literal[1 + len(ctx):])
    # each pooled vector is the mean of a run of consecutive context embeddings; together
    # the runs cover the context in order: find the cut points greedily
    ctx_emb = literal[1: 1 + len(ctx)]
    start = 0
    for vec in pooled[1:5]:
        end = next(e for e in range(start + 1, len(ctx) + 1)
                   if torch.allclose(ctx_emb[start:e].mean(0), vec, atol=1e-6))
        start = end
    assert start == len(ctx)


def test_pooled_training_saves_an_ordinary_opt_folder(tmp_path):
    out = pretrain_tiny_opt(DOCS * 8, tmp_path / "opt", LMSizes(steps=3, batch=4, hidden=16, layers=1, heads=2),
                            pool_context=0.5)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "opt"
    assert tok(DOCS[0]).input_ids[0] == tok.bos_token_id == model.config.bos_token_id


def test_copy_lessons_are_exactly_the_documents_that_repeat_their_context(tmp_path):
    docs = DOCS + [REPEAT]
    tok = train_tokenizer(docs * 4, tmp_path / "tok", vocab_size=300)
    split = _split_documents(tok, docs)
    assert _repeats(split) == [split[3]]
    # a repeat that differs in one word is not one
    near = "a large blue square at the top\n</s>a large red square at the top\n"
    assert _repeats(_split_documents(tok, [near])) == []


def test_copy_steps_need_repeating_documents(tmp_path):
    with pytest.raises(ValueError, match="copy_steps"):
        pretrain_tiny_opt(DOCS * 4, tmp_path / "opt", LMSizes(steps=2, batch=2, hidden=16, layers=1, heads=2),
                          copy_steps=1)
