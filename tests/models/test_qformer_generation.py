"""The Q-Former captioner's token ids against transformers' own ``generate``, and its
length-normalised beam search against transformers 4.26's, which LAVIS pins.

transformers has no Q-Former captioner, so its generic ``GenerationMixin`` drives our
Q-Former's full (uncached) forward pass: the greedy / beam-search logic and the length
semantics are transformers', the scores the Q-Former's (whose forward is checked against
transformers' BLIP-2 elsewhere). Lengths count generated tokens, as ``max_new_tokens``.
The installed transformers (>= 4.36) divides a beam's log-probability by a length one
shorter than 4.26 did when a beam reaches the maximum length, and stops on a different
heuristic; with ``length_penalty=0`` the two agree, so beams are compared with it there, and
with LAVIS's ``length_penalty=1`` against the literal 4.26 loops below.
"""
from __future__ import annotations

import pytest
import torch
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from tiny_models import tiny_stage1_overrides
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
    kw = dict(length_penalty=0.0) if num_beams > 1 else {}  # where transformers 4.26 and 5 agree
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


def _lavis_beam_search(next_logits, start, num_beams, max_length, min_length, penalty, eos, pad,
                       length_penalty=1.0, num_return=1):
    """transformers 4.26's ``beam_search`` with its ``BeamSearchScorer`` and ``BeamHypotheses``
    (no early stopping), one sample and one candidate at a time as written there; LAVIS pins
    ``transformers<4.27``. Lengths count the start token.

    A finished hypothesis is the sequence before its end token, scored
    ``sum(log p) / len ** length_penalty``; a sample is done when it holds ``num_beams`` of them
    and the best of the step's ``2 x num_beams`` candidates, divided by the current length,
    does not beat the worst; beams still running at ``max_length`` join the hypotheses then.
    Returns each sample's ``num_return`` best hypotheses, best first, with their end tokens.
    """
    batch = start.shape[0]
    ids = start.repeat_interleave(num_beams, 0)
    beam_scores = torch.zeros(batch, num_beams)
    beam_scores[:, 1:] = -1e9
    beam_scores = beam_scores.view(-1)
    hyps = [[] for _ in range(batch)]  # (score, ids without the end token)
    done = [False] * batch

    def add(b, seq, score):
        score = score / seq.shape[-1] ** length_penalty
        if len(hyps[b]) < num_beams or score > min(s for s, _ in hyps[b]):
            hyps[b].append((score, seq))
            if len(hyps[b]) > num_beams:
                hyps[b].remove(min(hyps[b], key=lambda h: h[0]))

    while True:
        cur_len = ids.shape[-1]
        logp = torch.log_softmax(next_logits(ids).float(), -1)
        if penalty != 1.0:
            prev = logp.gather(1, ids)
            logp = logp.scatter(1, ids, torch.where(prev < 0, prev * penalty, prev / penalty))
        if cur_len < min_length:
            logp[:, eos] = float("-inf")
        vocab = logp.shape[-1]
        top_scores, top_idx = (logp + beam_scores[:, None]).view(batch, -1).topk(2 * num_beams, 1)
        next_scores, next_tokens, next_rows = [], [], []
        for b in range(batch):
            if done[b]:  # padded along, as transformers does
                next_scores += [0.0] * num_beams
                next_tokens += [pad] * num_beams
                next_rows += [0] * num_beams
                continue
            kept = 0
            for rank in range(2 * num_beams):
                token, row = int(top_idx[b, rank]) % vocab, b * num_beams + int(top_idx[b, rank]) // vocab
                if token == eos:
                    if rank < num_beams:
                        add(b, ids[row].clone(), float(top_scores[b, rank]))
                else:
                    next_scores.append(float(top_scores[b, rank]))
                    next_tokens.append(token)
                    next_rows.append(row)
                    kept += 1
                if kept == num_beams:
                    break
            if len(hyps[b]) >= num_beams:
                done[b] = min(s for s, _ in hyps[b]) >= float(top_scores[b].max()) / cur_len ** length_penalty
        beam_scores = torch.tensor(next_scores)
        ids = torch.cat([ids[next_rows], torch.tensor(next_tokens)[:, None]], 1)
        if all(done) or ids.shape[-1] >= max_length:
            break
    for b in range(batch):
        if not done[b]:
            for j in range(num_beams):
                add(b, ids[b * num_beams + j], float(beam_scores[b * num_beams + j]))
    best = [seq for h in hyps for _, seq in sorted(h, key=lambda x: x[0], reverse=True)[:num_return]]
    out = torch.full((len(best), min(max(len(s) for s in best) + 1, max_length)), pad)
    for b, seq in enumerate(best):
        out[b, :len(seq)] = seq
        if len(seq) < out.shape[1]:
            out[b, len(seq)] = eos
    return out


@pytest.mark.parametrize(
    "num_beams, max_length, min_length, penalty, length_penalty, num_captions",
    [(3, 7, 2, 1.0, 1.0, 1), (3, 8, 3, 1.5, 1.0, 1), (3, 12, 1, 1.0, 1.0, 1), (4, 10, 2, 1.0, 1.0, 1),
     (5, 9, 3, 1.2, 1.0, 1), (3, 9, 2, 1.0, -1.0, 1), (3, 9, 2, 1.0, 2.0, 1), (4, 9, 2, 1.0, 1.0, 3)],
)
def test_beam_search_is_transformers_4_26_as_lavis_runs_it(captioner, num_beams, max_length, min_length,
                                                           penalty, length_penalty, num_captions):
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(num_beams * max_length))
    tok = captioner.tokenizer
    model = QFormerCaptioner(captioner).eval()
    embeds = captioner.encode_image(images).repeat_interleave(num_beams, 0)
    with torch.no_grad():
        ref = _lavis_beam_search(
            lambda ids: model(input_ids=ids, image_embeds=embeds).logits[:, -1],
            torch.full((6, 1), tok.bos_token_id), num_beams, max_length + 1, min_length + 1, penalty,
            tok.sep_token_id, tok.pad_token_id, length_penalty, num_captions,
        )[:, 1:]
    out = captioner.generate({"image": images}, num_beams=num_beams, max_length=max_length, min_length=min_length,
                             repetition_penalty=penalty, length_penalty=length_penalty, num_captions=num_captions,
                             return_ids=True)
    assert len(out.texts) == 6 * num_captions
    assert _until_end(out.ids, tok).tolist() == _until_end(ref, tok).tolist()
