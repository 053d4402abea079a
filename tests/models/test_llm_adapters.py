"""LLM adapters (``causal_lm``, ``seq2seq_lm``) against values computed directly with the LLM.

Every expected number here comes from a plain forward of the ``transformers`` model on
one unpadded sequence built in the test; the adapters pad, batch, cache and short-list.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from llm_tiny import save_tiny_llm
from lavislike.errors import CheckpointError, ConfigError
from lavislike.models.llms import CausalLM, CausalLMConfig, Seq2SeqLM, Seq2SeqLMConfig
from lavislike.models.llms.base import resolve_dtype
from lavislike.registry import LLMS

PROMPTS = ["Question: what is on the table? Answer:", "Question: how many? Answer:"]
ANSWERS = ["yes", "no", "a red car", "two", "cat"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("llms")
    return {k: save_tiny_llm(root / k, k, seed=i) for i, k in enumerate(("opt", "llama", "t5"))}


def causal(folder, **kw) -> CausalLM:
    return CausalLM.from_config(OmegaConf.structured(CausalLMConfig(path=str(folder), **kw)))


def seq2seq(folder, **kw) -> Seq2SeqLM:
    return Seq2SeqLM.from_config(OmegaConf.structured(Seq2SeqLMConfig(path=str(folder), **kw)))


def soft_prompt(width: int, batch: int = 2, length: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, width, generator=g)


# -- registry, building, freezing -----------------------------------------------------------
def test_registered_with_config_schemas():
    assert LLMS.get("causal_lm") is CausalLM and LLMS.get_config("causal_lm") is CausalLMConfig
    assert LLMS.get("seq2seq_lm") is Seq2SeqLM and LLMS.get_config("seq2seq_lm") is Seq2SeqLMConfig


def test_dtype_defaults_and_errors():
    assert resolve_dtype(None, "fp16", torch.device("cuda")) == torch.float16
    assert resolve_dtype(None, "bf16", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype(None, "fp16", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", "fp16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16"):
        resolve_dtype("fp61", "fp16", torch.device("cpu"))


def test_frozen_eval_and_dtype(folders):
    llm = causal(folders["opt"], dtype="bf16")
    assert all(not p.requires_grad for p in llm.parameters())
    assert {p.dtype for p in llm.parameters()} == {torch.bfloat16}
    llm.train()
    assert not llm.model.training and not any(m.training for m in llm.model.modules())
    trainable = causal(folders["opt"], freeze=False)
    assert all(p.requires_grad for p in trainable.parameters())


def test_bad_path_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="llm.path"):
        causal(tmp_path / "nowhere")


def test_meta_device_reads_nothing():
    cfg = OmegaConf.structured(CausalLMConfig(load_weights=True))
    cfg.hf_config = {"model_type": "opt", "hidden_size": 64, "word_embed_proj_dim": 64, "ffn_dim": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1000}
    with torch.device("meta"):
        llm = CausalLM.from_config(cfg)
    assert llm.hidden_size == 64
    assert {p.device.type for p in llm.parameters()} == {"meta"}


# -- causal LM --------------------------------------------------------------------------------
def test_causal_loss_matches_hand_computation(folders):
    folder = folders["opt"]
    llm = causal(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    ref = AutoModelForCausalLM.from_pretrained(folder).eval()
    soft = soft_prompt(llm.hidden_size).requires_grad_(True)
    prefixes, targets = ["", "a photo of"], ["a dog on a couch", " a cat"]
    loss = llm.lm_loss(soft, prefixes, targets)

    # by hand: text + "\n", right padding, prompt tokens (BOS included) and padding masked
    texts = ["a dog on a couch\n", "a photo of a cat\n"]
    rows = [tok(t).input_ids for t in texts]
    n_prompt = len(tok("a photo of").input_ids)
    nll, count = 0.0, 0
    for b, ids in enumerate(rows):
        embeds = torch.cat([soft[b].detach(), ref.get_input_embeddings()(torch.tensor(ids))])
        logp = F.log_softmax(ref(inputs_embeds=embeds[None]).logits[0].float(), -1)
        first_target = n_prompt if b == 1 else 0
        for t in range(first_target, len(ids)):
            nll -= logp[soft.shape[1] + t - 1, ids[t]].item()
            count += 1
    assert loss.item() == pytest.approx(nll / count, abs=1e-5)
    assert tok("\n", add_special_tokens=False).input_ids == [llm.eos_token_id]

    loss.backward()  # gradients reach the soft prompt through the frozen LLM
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    assert all(p.grad is None for p in llm.parameters())


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_left_padded_batch_generates_like_single_prompts(folders, kind):
    llm = causal(folders[kind])
    soft = soft_prompt(llm.hidden_size)
    prompts = ["a photo of", "Question: how many people are there? Answer:"]
    for beams, rule in ((1, "lavis"), (3, "lavis"), (3, "transformers")):
        kwargs = llm.generation_kwargs(num_beams=beams, max_length=6, min_length=2)
        kwargs["eos_token_id"] = -1  # random weights: no early stop, compare all 6 tokens
        batched = llm.generate_ids(soft, prompts, beam_search=rule, **kwargs)
        for b in range(2):
            single = llm.generate_ids(soft[b : b + 1], prompts[b : b + 1], beam_search=rule, **kwargs)
            assert batched[b].tolist() == single[0].tolist(), (kind, beams, rule, b)
        assert batched.shape[1] == 6


def test_llama_without_pad_token_trains(folders):
    llm = causal(folders["llama"])
    assert llm.tokenizer.pad_token is not None
    soft = soft_prompt(llm.hidden_size).requires_grad_(True)
    loss = llm.lm_loss(soft, ["", ""], ["a dog", "two cats laying on a red blanket"])
    loss.backward()
    assert torch.isfinite(loss) and soft.grad.abs().sum() > 0


def _direct_causal_scores(folder, soft, prompts, answers):
    """Sum log p(answer tokens) from one unpadded forward per (question, answer)."""
    tok = AutoTokenizer.from_pretrained(folder)
    ref = AutoModelForCausalLM.from_pretrained(folder).eval()
    scores = torch.empty(len(prompts), len(answers))
    first = torch.empty(len(prompts), len(answers))
    with torch.no_grad():
        for b, prompt in enumerate(prompts):
            p_ids = tok(prompt).input_ids
            for a, answer in enumerate(answers):
                ids = tok(f"{prompt} {answer}\n").input_ids
                assert ids[: len(p_ids)] == p_ids
                embeds = torch.cat([soft[b], ref.get_input_embeddings()(torch.tensor(ids))])
                logp = F.log_softmax(ref(inputs_embeds=embeds[None]).logits[0].float(), -1)
                pos = range(soft.shape[1] + len(p_ids) - 1, soft.shape[1] + len(ids) - 1)
                targets = ids[len(p_ids):]
                scores[b, a] = sum(logp[i, t] for i, t in zip(pos, targets))
                first[b, a] = logp[pos[0], targets[0]]
    return scores, first


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_causal_ranking_matches_direct_likelihoods(folders, kind):
    llm = causal(folders[kind])
    soft = soft_prompt(llm.hidden_size, seed=3)
    expected, first = _direct_causal_scores(folders[kind], soft, PROMPTS, ANSWERS)
    got = llm.rank_answers(soft, PROMPTS, ANSWERS, num_candidates=128, chunk_size=3)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert got.argmax(1).tolist() == expected.argmax(1).tolist()

    # short-list: the 2 answers with the most likely first token, the others -inf
    short = llm.rank_answers(soft, PROMPTS, ANSWERS, num_candidates=2)
    for b in range(2):
        kept = torch.isfinite(short[b]).nonzero().flatten().tolist()
        top_first = set(first[b].topk(2).indices.tolist())
        assert len(kept) == 2 and set(kept) == top_first
        torch.testing.assert_close(short[b, kept], expected[b, kept], atol=1e-4, rtol=1e-4)


# -- seq2seq LM -------------------------------------------------------------------------------
def test_seq2seq_uses_exact_gelu(folders):
    x = torch.linspace(-3, 3, 101)
    llm = seq2seq(folders["t5"])
    assert llm.model.config.dense_act_fn == "gelu"
    act = llm.model.encoder.block[0].layer[1].DenseReluDense.act
    torch.testing.assert_close(act(x), F.gelu(x), atol=0, rtol=0)
    plain = seq2seq(folders["t5"], config_overrides={})
    assert plain.model.config.dense_act_fn == "gelu_new"
    assert not torch.equal(plain.model.encoder.block[0].layer[1].DenseReluDense.act(x), F.gelu(x))


def _t5_reference(folder):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(folder, dense_act_fn="gelu")
    return AutoModelForSeq2SeqLM.from_pretrained(folder, config=cfg).eval(), AutoTokenizer.from_pretrained(folder)


def test_seq2seq_prefix_lm_loss_matches_hand_computation(folders):
    llm = seq2seq(folders["t5"])
    ref, tok = _t5_reference(folders["t5"])
    soft = soft_prompt(llm.hidden_size).requires_grad_(True)
    prefixes, targets = ["a photo of", "two cats laying"], ["a dog", "on a red blanket"]
    loss = llm.lm_loss(soft, prefixes, targets)
    nll, count = 0.0, 0
    with torch.no_grad():
        for b in range(2):
            enc = torch.cat([soft[b].detach(), ref.get_input_embeddings()(torch.tensor(tok(prefixes[b]).input_ids))])
            labels = torch.tensor(tok(targets[b]).input_ids)
            dec = torch.cat([torch.tensor([0]), labels[:-1]])
            logp = F.log_softmax(ref(inputs_embeds=enc[None], decoder_input_ids=dec[None]).logits[0].float(), -1)
            nll -= logp[torch.arange(len(labels)), labels].sum().item()
            count += len(labels)
    assert loss.item() == pytest.approx(nll / count, abs=1e-5)
    loss.backward()
    assert soft.grad.abs().sum() > 0 and all(p.grad is None for p in llm.parameters())


def test_seq2seq_ranking_matches_direct_likelihoods(folders):
    llm = seq2seq(folders["t5"])
    ref, tok = _t5_reference(folders["t5"])
    soft = soft_prompt(llm.hidden_size, seed=5)
    prompts = ["Question: what is on the table? Short answer:", "Question: how many? Short answer:"]
    expected = torch.empty(2, len(ANSWERS))
    with torch.no_grad():
        for b in range(2):
            enc = torch.cat([soft[b], ref.get_input_embeddings()(torch.tensor(tok(prompts[b]).input_ids))])
            for a, answer in enumerate(ANSWERS):
                labels = torch.tensor(tok(answer).input_ids)
                out = ref(inputs_embeds=enc[None], labels=labels[None])
                expected[b, a] = -out.loss * len(labels)
    got = llm.rank_answers(soft, prompts, ANSWERS, chunk_size=4)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    short = llm.rank_answers(soft, prompts, ANSWERS, num_candidates=3)
    assert (torch.isfinite(short).sum(1) == 3).all()


def test_seq2seq_batched_generation_matches_single(folders):
    llm = seq2seq(folders["t5"])
    soft = soft_prompt(llm.hidden_size)
    prompts = ["a photo of", "Question: how many people are there? Short answer:"]
    kwargs = llm.generation_kwargs(num_beams=3, max_length=5, min_length=5)
    batched = llm.generate_ids(soft, prompts, **kwargs)
    for b in range(2):
        single = llm.generate_ids(soft[b : b + 1], prompts[b : b + 1], **kwargs)
        assert batched[b].tolist() == single[0].tolist()
    assert batched.shape[1] == 5  # new tokens only: the decoder start token is dropped
