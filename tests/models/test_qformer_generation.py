"""The Q-Former captioner's token ids against transformers' own ``generate``, and its
length-normalised beam search against transformers 4.33.2's, which LAVIS pins.

transformers has no Q-Former captioner, so its generic ``GenerationMixin`` drives our
Q-Former's full (uncached) forward pass: the greedy / beam-search logic and the length
semantics are transformers', the scores the Q-Former's (whose forward is checked against
transformers' BLIP-2 elsewhere). Lengths count generated tokens, as ``max_new_tokens``.
The installed transformers (5) divides a beam's log-probability by a length one
shorter than 4.33 did when a beam reaches the maximum length, and stops on a different
heuristic; with ``length_penalty=0`` the two agree, so beams are compared with it there, and
with LAVIS's ``length_penalty=1`` (and others) against the literal 4.33 loops of
:mod:`lavis_beam_reference`.
"""
from __future__ import annotations

import pytest
import torch
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from lavis_beam_reference import lavis_beam_search
from tiny_models import tiny_stage1_overrides
from lavislike.errors import ConfigError
from lavislike.models import load_model


class QFormerCaptioner(PreTrainedModel, GenerationMixin):
    """Our Q-Former's LM head as a transformers causal LM (the whole text re-read each step)."""

    config_class = PretrainedConfig

    def __init__(self, blip2):
        super().__init__(PretrainedConfig(vocab_size=blip2.qformer.cfg.vocab_size))
        self.blip2 = blip2

    def forward(self, input_ids, image_embeds=None, **_):
        queries = self.blip2.qformer.query_tokens
        hidden = self.blip2.qformer(
            query_embeds=queries.expand(input_ids.shape[0], -1, -1), input_ids=input_ids,
            image_embeds=image_embeds, causal=True,
        ).last_hidden_state
        return CausalLMOutput(logits=self.blip2.qformer.lm_logits(hidden[:, queries.shape[1]:]))

    def prepare_inputs_for_generation(self, input_ids, image_embeds=None, **_):
        return {"input_ids": input_ids, "image_embeds": image_embeds}


def _until_end(ids: torch.Tensor, tok) -> torch.Tensor:
    """Ids with everything after the first end token as padding (transformers' beam search
    pads finished rows with the end token, ours with the pad token)."""
    ended = (ids == tok.sep_token_id).long().cumsum(1) - (ids == tok.sep_token_id).long()
    return ids.masked_fill(ended > 0, tok.pad_token_id)


@pytest.fixture(scope="module")
def captioner(tiny_bert_tokenizer_dir):
    torch.manual_seed(0)
    model = load_model("blip2", "tiny", is_eval=True, **tiny_stage1_overrides(tiny_bert_tokenizer_dir))
    with torch.no_grad():  # wider than the init, so that captions depend on the image
        for name, p in model.named_parameters():
            if p.dim() > 1 and not name.startswith("image_encoder"):
                p.normal_(0, 0.3)
        # a likely end token, so that captions end at different lengths and min_length binds
        model.qformer.lm_head.decoder.bias[model.tokenizer.sep_token_id] += 4.0
    return model


@pytest.mark.parametrize(
    "num_beams, max_length, min_length, penalty",
    [(1, 7, 2, 1.0), (3, 7, 2, 1.0), (3, 5, 5, 1.0), (1, 12, 1, 1.0), (1, 8, 3, 1.5), (3, 8, 3, 1.5),
     (4, 10, 2, 1.0), (5, 9, 3, 1.2)],
)
def test_token_ids_match_transformers_generate(captioner, num_beams, max_length, min_length, penalty):
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(num_beams + max_length))
    tok = captioner.tokenizer
    embeds = captioner.encode_image(images)
    start = torch.full((3, 1), tok.bos_token_id)
    kw = dict(length_penalty=0.0) if num_beams > 1 else {}  # where transformers 4.33 and 5 agree
    with torch.no_grad():
        ref = QFormerCaptioner(captioner).eval().generate(
            input_ids=start, image_embeds=embeds, num_beams=num_beams, do_sample=False,
            max_new_tokens=max_length, min_new_tokens=min_length, repetition_penalty=penalty,
            eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, use_cache=False, **kw,
        )[:, 1:]
    out = captioner.generate({"image": images}, num_beams=num_beams, max_length=max_length,
                             min_length=min_length, repetition_penalty=penalty, return_ids=True, **kw)
    if min_length < max_length:  # some captions end early, some run to max_length
        assert (out.ids == tok.sep_token_id).any()
    assert _until_end(out.ids, tok).tolist() == _until_end(ref, tok).tolist()
    assert out.texts == [t.strip() for t in tok.batch_decode(ref, skip_special_tokens=True)]
    assert captioner.generate({"image": images}, num_beams=num_beams, max_length=max_length,
                              min_length=min_length, repetition_penalty=penalty, **kw) == out.texts


@pytest.mark.parametrize(
    "num_beams, max_length, min_length, penalty, length_penalty, num_captions",
    [(3, 7, 2, 1.0, 1.0, 1), (3, 8, 3, 1.5, 1.0, 1), (3, 12, 1, 1.0, 1.0, 1), (4, 10, 2, 1.0, 1.0, 1),
     (5, 9, 3, 1.2, 1.0, 1), (3, 9, 2, 1.0, -1.0, 1), (3, 9, 2, 1.0, 2.0, 1), (4, 9, 2, 1.0, 1.0, 3)],
)
def test_beam_search_is_transformers_4_33_as_lavis_runs_it(captioner, num_beams, max_length, min_length,
                                                           penalty, length_penalty, num_captions):
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(num_beams * max_length))
    tok = captioner.tokenizer
    model = QFormerCaptioner(captioner).eval()
    embeds = captioner.encode_image(images).repeat_interleave(num_beams, 0)
    with torch.no_grad():
        ref = lavis_beam_search(
            lambda ids: model(input_ids=ids, image_embeds=embeds).logits[:, -1],
            torch.full((6, 1), tok.bos_token_id), num_beams, max_length + 1, min_length + 1, penalty,
            tok.sep_token_id, tok.pad_token_id, length_penalty, num_captions,
        )[:, 1:]
    out = captioner.generate({"image": images}, num_beams=num_beams, max_length=max_length, min_length=min_length,
                             repetition_penalty=penalty, length_penalty=length_penalty, num_captions=num_captions,
                             return_ids=True)
    assert len(out.texts) == 6 * num_captions
    assert _until_end(out.ids, tok).tolist() == _until_end(ref, tok).tolist()


@pytest.mark.parametrize(
    "num_captions, top_p, max_length, min_length, penalty",
    [(2, 0.9, 8, 2, 1.0), (3, 0.5, 10, 1, 1.3), (1, 0.99, 6, 3, 1.0), (2, 1.0, 7, 1, 1.0)],
)
def test_nucleus_sampling_draws_what_transformers_draws(captioner, num_captions, top_p, max_length, min_length,
                                                        penalty):
    """Same seed, same tokens: transformers' top-k 50 and top-p filters and its one
    ``multinomial`` draw per step over the vocabulary order (LAVIS samples through it)."""
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(max_length))
    tok = captioner.tokenizer
    embeds = captioner.encode_image(images)
    torch.manual_seed(num_captions * 11)
    with torch.no_grad():
        ref = QFormerCaptioner(captioner).eval().generate(
            input_ids=torch.full((3, 1), tok.bos_token_id), image_embeds=embeds, do_sample=True, top_p=top_p,
            num_return_sequences=num_captions, max_new_tokens=max_length, min_new_tokens=min_length,
            repetition_penalty=penalty, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
            use_cache=False,
        )[:, 1:]
    torch.manual_seed(num_captions * 11)
    out = captioner.generate({"image": images}, use_nucleus_sampling=True, top_p=top_p, num_captions=num_captions,
                             max_length=max_length, min_length=min_length, repetition_penalty=penalty,
                             return_ids=True)
    assert _until_end(out.ids, tok).tolist() == _until_end(ref, tok).tolist()
    torch.manual_seed(num_captions * 11 + 1)
    again = captioner.generate({"image": images}, use_nucleus_sampling=True, top_p=top_p, num_captions=num_captions,
                               max_length=max_length, min_length=min_length, repetition_penalty=penalty)
    assert again != out.texts  # it samples


def test_only_lavis_beam_search_for_the_qformer(captioner):
    with pytest.raises(ConfigError, match="the Q-Former captioner has LAVIS's beam search only"):
        captioner.generate({"image": torch.randn(1, 3, 32, 32)}, beam_search="transformers")
    with pytest.raises(ConfigError, match="num_captions=4 is more than num_beams=3"):
        captioner.generate({"image": torch.randn(1, 3, 32, 32)}, num_beams=3, num_captions=4)
