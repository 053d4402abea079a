"""The LLMs' beam search: ``beam_search="lavis"`` (the default) against a literal transcription
of transformers 4.33.2's loops, which LAVIS pins, and ``"transformers"`` against the installed
``generate``.

The reference re-reads the whole input every step (no cache) and takes its logits from the
``transformers`` model itself; the adapters run the prompt once per image and widen its cache.
The end token is the token greedy decoding emits second most often (the most frequent one is
often a token the model repeats), so hypotheses finish at many lengths.
"""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from lavis_beam_reference import lavis_beam_search
from llm_tiny import save_tiny_llm
from lavislike.errors import ConfigError
from lavislike.models.llms import CausalLM, CausalLMConfig, Seq2SeqLM, Seq2SeqLMConfig

KINDS = ("opt", "llama", "t5")
PROMPTS = ["a photo of", "Question: how many people are there? Answer:", "what is it?"]
# num_beams, max_length, min_length, repetition_penalty, length_penalty, num_captions
SETTINGS = [(3, 7, 1, 1.0, 1.0, 1), (3, 8, 3, 1.3, 1.0, 1), (4, 10, 2, 1.0, -1.0, 1), (3, 9, 2, 1.0, 2.0, 1),
            (4, 9, 2, 1.0, 1.0, 3), (5, 12, 1, 1.0, 1.0, 2), (2, 6, 1, 1.0, 0.0, 1)]


@pytest.fixture(scope="module")
def llms(tmp_path_factory):
    root = tmp_path_factory.mktemp("beam_llms")
    out = {}
    for i, kind in enumerate(KINDS):
        folder = str(save_tiny_llm(root / kind, kind, seed=i))
        if kind == "t5":
            llm = Seq2SeqLM.from_config(OmegaConf.structured(Seq2SeqLMConfig(path=folder)))
        else:
            llm = CausalLM.from_config(OmegaConf.structured(CausalLMConfig(path=folder)))
        torch.manual_seed(i)
        with torch.no_grad():  # wider than the init: peaked, prompt-dependent distributions
            for p in llm.model.parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.25)
        soft = torch.randn(len(PROMPTS), 3, llm.hidden_size, generator=torch.Generator().manual_seed(i))
        greedy = llm.generate_ids(soft, PROMPTS, **llm.generation_kwargs(num_beams=1, max_length=10),
                                  eos_token_id=-1)
        counts = torch.bincount(greedy.flatten())
        out[kind] = llm, soft, int(counts.argsort(descending=True, stable=True)[1])
    return out


def _reference(llm, soft, eos, num_beams, max_length, min_length, penalty, length_penalty, num_return):
    """``lavis_beam_search`` driving the ``transformers`` model as 4.33's ``generate`` does:
    ``inputs_embeds`` and no start id for a decoder-only LLM, the decoder start id for T5."""
    pad = llm.tokenizer.pad_token_id
    if isinstance(llm, Seq2SeqLM):
        embeds, attn = llm._encoder_inputs(soft, PROMPTS, None)
        embeds, attn = embeds.repeat_interleave(num_beams, 0), attn.repeat_interleave(num_beams, 0)
        start = torch.full((len(PROMPTS), 1), llm._start_id)

        def next_logits(ids):
            return llm.model(inputs_embeds=embeds, attention_mask=attn, decoder_input_ids=ids).logits[:, -1]
    else:
        embeds, attn = llm._prompted_inputs(soft, PROMPTS, None)
        embeds, attn = embeds.repeat_interleave(num_beams, 0), attn.repeat_interleave(num_beams, 0)
        start = torch.zeros((len(PROMPTS), 0), dtype=torch.long)

        def next_logits(ids):
            mask = torch.cat([attn, torch.ones_like(ids)], 1)
            positions = (mask.cumsum(1) - 1).masked_fill(mask == 0, 1)  # as transformers' generate
            return llm.model(inputs_embeds=torch.cat([embeds, llm.embed(ids)], 1), attention_mask=mask,
                             position_ids=positions).logits[:, -1]
    with torch.no_grad():
        out = lavis_beam_search(next_logits, start, num_beams, start.shape[1] + max_length,
                                start.shape[1] + min_length, penalty, eos, pad, length_penalty, num_return)
    return out[:, start.shape[1]:]


def _ours(llm, soft, eos, num_beams, max_length, min_length, penalty, length_penalty, num_return, rule="lavis"):
    generation = llm.generation_kwargs(num_beams=num_beams, max_length=max_length, min_length=min_length,
                                       repetition_penalty=penalty, length_penalty=length_penalty,
                                       num_captions=num_return)
    return llm.generate_ids(soft, PROMPTS, None, rule, eos_token_id=eos, **generation)


def _until_end(ids: torch.Tensor, eos: int, pad: int) -> list:
    """Rows as lists with everything after the first end token dropped (transformers pads
    finished rows with the pad token or the end token, depending on the version)."""
    rows = []
    for row in ids.tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_lavis_beam_search_is_transformers_4_33(llms, kind, setting):
    llm, soft, eos = llms[kind]
    ours = _ours(llm, soft, eos, *setting)
    ref = _reference(llm, soft, eos, *setting)
    assert ours.shape[0] == len(PROMPTS) * setting[-1]
    assert ours.tolist() == ref.tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_rule_is_installed_generate_and_differs_from_lavis(llms, kind):
    llm, soft, eos = llms[kind]
    pad = llm.tokenizer.pad_token_id
    differ = early = 0
    for setting in SETTINGS:
        theirs = _ours(llm, soft, eos, *setting, rule="transformers")
        if isinstance(llm, Seq2SeqLM):
            embeds, attn = llm._encoder_inputs(soft, PROMPTS, None)
        else:
            embeds, attn = llm._prompted_inputs(soft, PROMPTS, None)
        generation = llm.generation_kwargs(num_beams=setting[0], max_length=setting[1], min_length=setting[2],
                                           repetition_penalty=setting[3], length_penalty=setting[4],
                                           num_captions=setting[5])
        with torch.no_grad():
            direct = llm.model.generate(inputs_embeds=embeds, attention_mask=attn, eos_token_id=eos, **generation)
        if isinstance(llm, Seq2SeqLM):
            direct = direct[:, 1:]
        assert theirs.tolist() == direct.tolist()
        lavis = _reference(llm, soft, eos, *setting)
        differ += _until_end(theirs, eos, pad) != _until_end(lavis, eos, pad)
        early += sum(eos in row for row in lavis.tolist())
    # the settings reach both rules' differences: finished lengths and the stopping test
    assert early > 0 and differ > 0, (early, differ)


def test_lavis_rule_checks_its_arguments(llms):
    llm, soft, eos = llms["opt"]
    generation = llm.generation_kwargs(num_beams=3, max_length=5)
    with pytest.raises(ConfigError, match="beam_search: 'lavsi' is not valid. Did you mean 'lavis'"):
        llm.generate_ids(soft, PROMPTS, None, "lavsi", **generation)
    with pytest.raises(ConfigError, match=r"\['no_repeat_ngram_size'\].*beam_search='transformers'"):
        llm.generate_ids(soft, PROMPTS, None, "lavis", no_repeat_ngram_size=2, **generation)
    with pytest.raises(ConfigError, match="num_captions=4 is more than num_beams=3"):
        llm.generate_ids(soft, PROMPTS, None, **{**generation, "num_return_sequences": 4})
    llm.model.generation_config.no_repeat_ngram_size = 2
    try:
        with pytest.raises(ConfigError, match="generation_config sets \\['no_repeat_ngram_size'\\]"):
            llm.generate_ids(soft, PROMPTS, None, **generation)
        # transformers' generate applies it
        assert llm.generate_ids(soft, PROMPTS, None, "transformers", **generation).shape[0] == len(PROMPTS)
    finally:
        llm.model.generation_config.no_repeat_ngram_size = None


def test_tasks_pass_run_beam_search_to_the_llm(tmp_path):
    from blip2_llm_tiny import images, save_hf_blip2
    from lavislike.models.convert.hf_llm import from_hf_llm
    from lavislike.tasks.captioning import CaptionTask
    from lavislike.tasks.vqa import VQATask

    model = from_hf_llm(save_hf_blip2(tmp_path / "opt", "opt")[0])
    seen = []
    generate_ids = model.llm.generate_ids

    def spy(*args, **kwargs):  # the real generate_ids, recording the rule it got
        seen.append(args[3] if len(args) > 3 else kwargs.get("beam_search", "lavis"))
        return generate_ids(*args, **kwargs)

    model.llm.generate_ids = spy
    samples = {"image": images(), "image_id": [1, 2], "text_input": ["what?", "who?"], "question_id": [3, 4]}
    for rule in ("lavis", "transformers"):
        CaptionTask({"beam_search": rule, "num_beams": 2, "max_len": 3, "min_len": 1}).valid_step(model, samples)
        VQATask({"beam_search": rule, "num_beams": 2, "max_len": 3}).valid_step(model, samples)
    CaptionTask({"num_beams": 2, "max_len": 3, "min_len": 1}).valid_step(model, samples)
    assert seen == ["lavis", "lavis", "transformers", "transformers", "lavis"]
    with pytest.raises(ConfigError, match="run.beam_search: 'lavsi' is not valid. Did you mean 'lavis'"):
        VQATask({"beam_search": "lavsi"})
    with pytest.raises(ConfigError, match="run.beam_search: 'hf' is not valid.*Valid: lavis, transformers"):
        CaptionTask({"beam_search": "hf"})


def test_default_rule_keeps_lavis_signature_models_working():
    """A plugin model with LAVIS's ``generate`` / ``predict_answers`` signature (no
    ``beam_search``) still runs the tasks' default; asking it for another rule fails loudly."""
    from lavislike.tasks.captioning import CaptionTask
    from lavislike.tasks.vqa import VQATask

    class LavisSignature:
        def generate(self, samples, use_nucleus_sampling=False, num_beams=5, max_length=30, min_length=1):
            return [f"{num_beams} beams"] * len(samples["image_id"])

        def predict_answers(self, samples, num_beams=5, inference_method="generate", max_len=10, min_len=1,
                            num_ans_candidates=128, answer_list=None, prompt="", length_penalty=0):
            return ["yes"] * len(samples["question_id"])

    samples = {"image_id": [1, 2], "question_id": [3, 4], "text_input": ["a?", "b?"]}
    assert [r["caption"] for r in CaptionTask({"num_beams": 2}).valid_step(LavisSignature(), samples)] == ["2 beams"] * 2
    assert [r["answer"] for r in VQATask({}).valid_step(LavisSignature(), samples)] == ["yes", "yes"]
    with pytest.raises(TypeError, match="beam_search"):
        CaptionTask({"beam_search": "transformers"}).valid_step(LavisSignature(), samples)
