"""Token decoding from a model's next-token logits: greedy, beam search and nucleus sampling.

Used by the Q-Former captioner and by the LLMs' LAVIS beam search
(:mod:`lavislike.models.llms.beam_search`). The model supplies a
``step(tokens (N, 1), cache) -> (logits (N, V), cache)`` function, the logits of the first
position and a ``reorder(cache, rows) -> cache`` for beam search; everything here is batched
over N = batch x beams (no Python loop over samples). Semantics follow Hugging Face
``generate`` as LAVIS runs it (its ``requirements.txt`` pins ``transformers==4.33.2``):
``max_length`` and ``min_length`` count the ids in ``start`` (the Q-Former's ``[DEC]``, T5's
decoder start, nothing for a decoder-only LLM fed embeddings), the repetition penalty divides
positive scores and multiplies negative ones; a finished beam hypothesis is scored
``sum(log p) / length ** length_penalty`` with ``length`` its ids before the end token, a
sample stops when no candidate of the step, divided by the current length plus one, can beat
its worst finished hypothesis, and beams still running at ``max_length`` compete with
``length = max_length``. Sampling keeps the top 50 tokens (``generate``'s default top-k)
before the top-p filter and draws over the vocabulary order, as transformers does, so a seed
gives LAVIS's samples. (transformers 4.26, LAVIS 1.0.2's pin, divides the stopping test
by the current length; transformers 5 counts generated tokens with the end token, and stops on the
best running beam.)
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from lavislike.errors import ConfigError

Step = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
Reorder = Callable[[Any, torch.Tensor], Any]


def _process(logits: torch.Tensor, seqs: torch.Tensor, eos_id: int, min_length: int, penalty: float) -> torch.Tensor:
    logits = logits.float()
    if penalty != 1.0:
        prev = logits.gather(1, seqs)
        logits = logits.scatter(1, seqs, torch.where(prev > 0, prev / penalty, prev * penalty))
    if seqs.shape[1] < min_length:
        logits[:, eos_id] = float("-inf")
    return logits


def check_num_captions(num_captions: int, num_beams: int) -> None:
    """Beam search returns at most ``num_beams`` hypotheses per sample: refuse asking for more."""
    if num_captions > num_beams:
        raise ConfigError(f"num_captions={num_captions} is more than num_beams={num_beams}: beam search returns "
                          "at most num_beams captions; raise num_beams or lower num_captions")


def reorder_pairs(cache: list, index: torch.Tensor) -> list:
    """Rows ``index`` of a cache held as a list of ``(key, value)`` tensors per layer."""
    return [(k.index_select(0, index), v.index_select(0, index)) for k, v in cache]


def decode(
    step: Step,
    logits: torch.Tensor,
    cache: list,
    start: torch.Tensor,
    *,
    num_beams: int,
    sample: bool,
    eos_id: int,
    pad_id: int,
    max_length: int,
    min_length: int,
    top_p: float = 0.9,
    repetition_penalty: float = 1.0,
    length_penalty: float = 1.0,
    num_return: int = 1,
    reorder: Reorder = reorder_pairs,
) -> torch.Tensor:
    """Decode from the first-position ``logits`` (N, V) and ``cache``; returns token ids.

    For beam search the N rows are ``batch x num_beams`` copies (image-major); for greedy
    and sampling every row is its own sequence. ``start`` (N, S) holds the start ids
    (S may be 0); ``reorder`` picks rows of ``cache`` when beams change places.

    Returns:
        (B x num_return, L) ids, padded with ``pad_id`` after the end token.
    """
    if num_beams > 1 and not sample:
        return _beam_search(step, logits, cache, start, num_beams, eos_id, pad_id, max_length,
                            min_length, repetition_penalty, length_penalty, num_return, reorder)
    seqs = start
    done = torch.zeros(start.shape[0], dtype=torch.bool, device=start.device)
    for _ in range(max_length - start.shape[1]):
        scores = _process(logits, seqs, eos_id, min_length, repetition_penalty)
        if sample:
            token = _nucleus(scores, top_p)
        else:
            token = scores.argmax(-1)
        token = token.masked_fill(done, pad_id)
        seqs = torch.cat([seqs, token[:, None]], 1)
        done = done | (token == eos_id)
        if bool(done.all()):
            break
        logits, cache = step(token[:, None], cache)
    return seqs


def _nucleus(scores: torch.Tensor, top_p: float, top_k: int = 50) -> torch.Tensor:
    """One token per row, drawn as transformers' sampling draws it: its top-k (generate's
    default 50, which LAVIS runs with) and top-p filters, then one ``multinomial`` over the
    vocabulary in its own order, so that a seed gives LAVIS's tokens."""
    if top_k:
        kth = scores.topk(min(top_k, scores.shape[-1]), -1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        # drop the least likely tokens whose total mass stays within 1 - top_p (the top token never)
        ascending, order = scores.sort(-1)
        drop = ascending.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[:, -1] = False
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(scores.softmax(-1), 1).squeeze(1)


def _beam_search(
    step: Step,
    logits: torch.Tensor,
    cache: list,
    start: torch.Tensor,
    nb: int,
    eos_id: int,
    pad_id: int,
    max_length: int,
    min_length: int,
    repetition_penalty: float,
    length_penalty: float,
    num_return: int,
    reorder: Reorder,
) -> torch.Tensor:
    n, device = start.shape[0], start.device
    bsz = n // nb
    vocab = logits.shape[-1]
    beam_scores = torch.zeros(bsz, nb, device=device)
    beam_scores[:, 1:] = float("-inf")  # all beams start identical: expand from the first only
    seqs = start
    # pool of finished hypotheses per sample: scores and lengths (B, nb), padded ids
    # (B, nb, max_length); a length counts the end token when it fits
    pool_scores = torch.full((bsz, nb), float("-inf"), device=device)
    pool_lens = torch.zeros((bsz, nb), dtype=torch.long, device=device)
    pool_seqs = torch.full((bsz, nb, max_length), pad_id, dtype=torch.long, device=device)
    batch_done = torch.zeros(bsz, dtype=torch.bool, device=device)
    arange_b = torch.arange(bsz, device=device)

    def add_to_pool(cand_seqs: torch.Tensor, cand_scores: torch.Tensor, length: int) -> None:
        nonlocal pool_scores, pool_lens, pool_seqs
        padded = F.pad(cand_seqs, (0, max_length - cand_seqs.shape[-1]), value=pad_id)
        norm = cand_scores / (length ** length_penalty)
        all_scores = torch.cat([pool_scores, norm], 1)
        all_lens = torch.cat([pool_lens, torch.full_like(norm, cand_seqs.shape[-1], dtype=torch.long)], 1)
        all_seqs = torch.cat([pool_seqs, padded], 1)
        top = all_scores.topk(nb, 1).indices
        pool_scores, pool_lens = all_scores.gather(1, top), all_lens.gather(1, top)
        pool_seqs = all_seqs.gather(1, top[..., None].expand(-1, -1, max_length))

    while True:
        cur_len = seqs.shape[1]
        # as transformers (and so LAVIS): the processors act on log-probabilities, so banning
        # the end token does not renormalise the others
        logp = _process(F.log_softmax(logits.float(), -1), seqs, eos_id, min_length, repetition_penalty)
        cand = (beam_scores[..., None] + logp.view(bsz, nb, vocab)).view(bsz, nb * vocab)
        top_scores, top_idx = cand.topk(2 * nb, 1)
        beam_of, token = top_idx // vocab, top_idx % vocab
        is_eos = token == eos_id
        # finished: end tokens ranked within the first nb candidates (as HF does)
        rank = torch.arange(2 * nb, device=device)[None]
        fin = is_eos & (rank < nb) & ~batch_done[:, None] & torch.isfinite(top_scores)
        if bool(fin.any()):
            src = (arange_b[:, None] * nb + beam_of)  # (B, 2nb) row of the origin beam
            cand_seqs = torch.cat([seqs[src], token[..., None]], -1)  # (B, 2nb, L+1)
            # scored by its length before the end token, as transformers' BeamHypotheses
            add_to_pool(cand_seqs, top_scores.masked_fill(~fin, float("-inf")), cur_len)
        # next beams: the first nb candidates that are not end tokens
        order = (is_eos.float() * 4 * nb + rank).argsort(1)[:, :nb]
        beam_scores = top_scores.gather(1, order)
        next_tokens = token.gather(1, order)
        origin = (arange_b[:, None] * nb + beam_of.gather(1, order)).view(-1)
        seqs = torch.cat([seqs[origin], next_tokens.view(-1, 1)], 1)
        # a sample is done when its pool is full and the best candidate of this step (end
        # tokens included), divided by the length it reaches, cannot beat its worst
        best = top_scores[:, 0] / ((cur_len + 1) ** length_penalty)
        batch_done |= torch.isfinite(pool_scores[:, -1]) & (pool_scores[:, -1] >= best)
        if bool(batch_done.all()) or seqs.shape[1] >= max_length:
            break
        cache = reorder(cache, origin)
        logits, cache = step(next_tokens.view(-1, 1), cache)
    if seqs.shape[1] >= max_length:  # unfinished beams compete at the end (HF finalize)
        running = beam_scores.masked_fill(batch_done[:, None], float("-inf"))
        add_to_pool(seqs.view(bsz, nb, -1), running, seqs.shape[1])
    width = int(pool_lens[:, :num_return].max())
    return pool_seqs[:, :num_return, :width].reshape(bsz * num_return, width)
