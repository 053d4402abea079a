"""Beam search over a frozen LLM with LAVIS's rules, or the installed transformers' own.

``beam_search="lavis"`` (the default of every ``generate`` / ``predict_answers``) decodes with
:func:`lavislike.models.decoding.decode`: the length normalisation and stopping rule of the
transformers LAVIS pins (4.33.2), which the installed transformers (5) changed. For a
decoder-only LLM fed embeddings, 4.33 divides a finished hypothesis by its tokens before the
end token and 5 by its tokens with it; for every LLM the two stop on different tests. So
beam captions and answers follow LAVIS wherever hypotheses of different lengths score close.
``beam_search="transformers"`` runs ``model.generate`` and gives exactly the ids of
transformers' BLIP-2 port. Greedy decoding and sampling agree in both and always run
``model.generate``.

The adapter supplies the model-specific part (:meth:`LLMAdapter._beam_state`): the first
position's logits for ``batch x beams`` rows, the cache, the start ids and a step function.
The prompt and soft prompt run once per image; only the cache is widened to the beams.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch

from lavislike.common.suggest import check_choice
from lavislike.errors import ConfigError
from lavislike.models.decoding import Reorder, Step, check_num_captions, decode

BEAM_SEARCH_RULES = ("lavis", "transformers")

# the generate keywords the LAVIS loop reads; anything else would be silently ignored there
_READ = {"do_sample", "num_beams", "max_new_tokens", "min_new_tokens", "repetition_penalty",
         "length_penalty", "num_return_sequences", "pad_token_id", "eos_token_id"}
# generation-config fields that add logits processors to transformers' beam search
_PROCESSORS = ("no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids", "forced_bos_token_id",
               "forced_eos_token_id", "suppress_tokens", "begin_suppress_tokens", "sequence_bias",
               "exponential_decay_length_penalty", "encoder_repetition_penalty", "renormalize_logits")


class BeamState(NamedTuple):
    """Where beam search starts: ``logits`` (N, V) of the first position for N = batch x
    beams rows (image-major), the model ``cache``, the ``start`` ids (N, S) that count toward
    the lengths, and how to ``step`` and ``reorder`` the cache."""

    logits: torch.Tensor
    cache: Any
    start: torch.Tensor
    step: Step
    reorder: Reorder


def reorder_hf_cache(cache: Any, rows: torch.Tensor) -> Any:
    """Rows ``rows`` of a transformers ``Cache`` (in place, as its ``generate`` does)."""
    cache.reorder_cache(rows)
    return cache


def check_beam_search(rule: str, key: str = "beam_search") -> str:
    check_choice(rule, BEAM_SEARCH_RULES, key)
    return rule


def uses_lavis_loop(rule: str, generation: dict) -> bool:
    """Whether ``generation`` (``generate`` keywords) is a beam search run by LAVIS's rules."""
    return check_beam_search(rule) == "lavis" and generation.get("num_beams", 1) > 1 and not generation.get("do_sample")


def lavis_beam_search(llm, soft_prompt: torch.Tensor, prompts, max_txt_len, eos_id: int, **generation) -> torch.Tensor:
    """New token ids (``B * num_return_sequences`` rows, image-major, end token included,
    padded) of a beam search with transformers 4.33's rules; ``generation`` holds
    ``generate`` keywords (``max_new_tokens`` / ``min_new_tokens`` count new tokens)."""
    unread = sorted(set(generation) - _READ)
    if unread:
        raise ConfigError(
            f"generate keyword(s) {unread} are not applied by beam_search='lavis'; "
            f"it reads {sorted(_READ)}. Pass beam_search='transformers' to use transformers' generate"
        )
    config = llm.model.generation_config
    default = type(config)()
    set_there = [k for k in _PROCESSORS if getattr(config, k, None) != getattr(default, k, None)]
    if set_there:
        raise ConfigError(
            f"the LLM's generation_config sets {set_there}, which beam_search='lavis' does not apply; "
            "pass beam_search='transformers' to use transformers' generate"
        )
    num_beams = int(generation["num_beams"])
    num_return = int(generation.get("num_return_sequences") or 1)
    check_num_captions(num_return, num_beams)
    state = llm._beam_state(soft_prompt, prompts, max_txt_len, num_beams)
    offset = state.start.shape[1]
    ids = decode(
        state.step, state.logits, state.cache, state.start, num_beams=num_beams, sample=False, eos_id=eos_id,
        pad_id=next(int(t) for t in (generation.get("pad_token_id"), llm.tokenizer.pad_token_id, eos_id) if t is not None),
        max_length=offset + int(generation.get("max_new_tokens") or 20),
        min_length=offset + int(generation.get("min_new_tokens") or 0),
        repetition_penalty=float(generation.get("repetition_penalty") or 1.0),
        length_penalty=float(generation.get("length_penalty", 1.0)), num_return=num_return, reorder=state.reorder,
    )
    return ids[:, offset:]
