"""A literal transcription of the beam search LAVIS runs (transformers 4.33.2's loops), the
independent reference of the Q-Former's and the LLMs' ``beam_search="lavis"``."""
from __future__ import annotations

import torch


def lavis_beam_search(next_logits, start, num_beams, max_length, min_length, penalty, eos, pad,
                      length_penalty=1.0, num_return=1):
    """transformers 4.33.2's ``beam_search`` with its ``BeamSearchScorer`` and ``BeamHypotheses``
    (no early stopping), one sample and one candidate at a time as written there; LAVIS's
    ``requirements.txt`` pins ``transformers==4.33.2``. Lengths count the ``start`` ids (none
    for a decoder-only model fed embeddings). ``next_logits(ids)`` gives each row's next-token
    logits after ``ids``.

    A finished hypothesis is the sequence before its end token, scored
    ``sum(log p) / len ** length_penalty``; a sample is done when it holds ``num_beams`` of them
    and the best of the step's ``2 x num_beams`` candidates, divided by the current length
    plus one (4.26, LAVIS 1.0.2's pin, divides by the current length), does not beat the
    worst; beams still running at ``max_length`` join the hypotheses then. Returns each
    sample's ``num_return`` best hypotheses, best first, with their end tokens.
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
                done[b] = min(s for s, _ in hyps[b]) >= float(top_scores[b].max()) / (cur_len + 1) ** length_penalty
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
