"""Decoder-only LLMs (OPT, LLaMA, ...) through ``AutoModelForCausalLM``.

The soft prompt goes in front of the token embeddings: ``[soft prompt][BOS prompt text]``.
Training appends ``end_of_text`` (``"\\n"`` for OPT, as the reference does) to every
caption and generation stops at that token; batched prompted generation is left-padded
with all the padding at the far left (``[pad][soft prompt][BOS prompt]``), the layout
``transformers``' BLIP-2 produces, so positions count from the first real input.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from lavislike.errors import ConfigError
from lavislike.models.attention import llm_attention_kernel
from lavislike.models.losses import token_cross_entropy
from lavislike.models.llms.base import LLMAdapter, LLMConfig, token_logprobs
from lavislike.models.llms.beam_search import BeamState, reorder_hf_cache
from lavislike.registry import LLMS

# Answers are tokenized after this text and the anchor's tokens dropped, so each answer
# gets the tokens the LLM emits after "...Answer:" whatever the tokenizer's space rules.
_ANSWER_ANCHOR = "Answer:"


@dataclass
class CausalLMConfig(LLMConfig):
    """``llm:`` block of :class:`CausalLM`.

    Attributes:
        end_of_text: appended to every training text and used as the stop token in
            generation (its last token); ``""`` = the tokenizer's EOS token.
    """

    name: str = "causal_lm"
    end_of_text: str = "\n"


@LLMS.register("causal_lm", config=CausalLMConfig)
class CausalLM(LLMAdapter):
    """A frozen decoder-only LLM reading the soft prompt before its text tokens.

    Example:
        >>> from omegaconf import OmegaConf
        >>> cfg = OmegaConf.structured(CausalLMConfig(path="facebook/opt-2.7b"))
        >>> llm = CausalLM.from_config(cfg)  # doctest: +SKIP
    """

    AUTO_CLASS = "AutoModelForCausalLM"
    GPU_DTYPE = "fp16"
    DEFAULT_VQA_PROMPT = "Question: {} Answer:"

    @property
    def end_of_text(self) -> str:
        return self.cfg.end_of_text or self.tokenizer.eos_token

    @property
    def eos_token_id(self) -> int:
        """Id of the token that ends a caption (the last token of ``end_of_text``)."""
        if not self.cfg.end_of_text:
            return int(self.tokenizer.eos_token_id)
        ids = self.tokenizer(self.cfg.end_of_text, add_special_tokens=False).input_ids
        if not ids:
            raise ConfigError(
                f"llm.end_of_text={self.cfg.end_of_text!r} is no token for this tokenizer; "
                "pick a text it keeps (e.g. '.') or '' for its EOS token"
            )
        return int(ids[-1])

    # -- inputs ---------------------------------------------------------------------------
    def _prompted_inputs(
        self, soft_prompt: torch.Tensor, prompts: Sequence[str], max_txt_len: Optional[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[pad][soft prompt][BOS prompt]`` embeddings and mask (padding at the far left)."""
        ids, mask = self.tokenize(prompts, side="left", max_length=max_txt_len)
        soft, soft_mask = self.prompt_embeds(soft_prompt)
        embeds = torch.cat([soft, self.embed(ids)], 1)
        attn = torch.cat([soft_mask, mask], 1)
        # left padding put the pads between soft prompt and text; a stable sort on the
        # mask moves them in front and keeps everything else in order
        order = torch.sort(attn, dim=1, stable=True).indices
        embeds = embeds.gather(1, order[..., None].expand_as(embeds))
        return embeds, attn.gather(1, order)

    # -- training -------------------------------------------------------------------------
    def lm_loss(
        self,
        soft_prompt: torch.Tensor,
        prefixes: Sequence[str],
        targets: Sequence[str],
        max_txt_len: Optional[int] = None,
    ) -> torch.Tensor:
        """LM loss on ``prefix + target + end_of_text``; soft prompt and prefix masked.

        The text is tokenized as one string (as the reference does) and the prefix's
        tokens (BOS included) get label -100; an empty prefix masks nothing, so BOS is then
        a target, exactly as in LAVIS.
        """
        texts = [p + t + self.end_of_text for p, t in zip(prefixes, targets)]
        ids, mask = self.tokenize(texts, side="right", max_length=max_txt_len)
        labels = ids.masked_fill(mask == 0, -100)
        if any(prefixes):
            plen = self.tokenizer(list(prefixes)).attention_mask
            plen = torch.tensor([len(m) if p else 0 for m, p in zip(plen, prefixes)], device=ids.device)
            labels = labels.masked_fill(torch.arange(ids.shape[1], device=ids.device)[None] < plen[:, None], -100)
        soft, soft_mask = self.prompt_embeds(soft_prompt)
        embeds = torch.cat([soft, self.embed(ids)], 1)
        attn = torch.cat([soft_mask, mask], 1)
        labels = torch.cat([torch.full(soft_mask.shape, -100, dtype=labels.dtype, device=labels.device), labels], 1)
        # the vocabulary-wide head only where a next token is labelled (not on the soft
        # prompt, prefix or padding): transformers' boolean ``logits_to_keep`` returns
        # those rows' logits, flattened; the loss is transformers' (fp32 logits, mean),
        # bit for bit
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != -100
        with llm_attention_kernel(embeds, self.dtype):
            logits = self.model(inputs_embeds=embeds, attention_mask=attn, logits_to_keep=keep, use_cache=False).logits
        if logits.dim() == 3:  # a model that computes every position's logits anyway
            logits = logits[keep]
        return token_cross_entropy(logits.float(), labels[:, 1:][keep[:, :-1]], layout=keep)

    # -- generation -----------------------------------------------------------------------
    def _transformers_generate(
        self, soft_prompt: torch.Tensor, prompts: Sequence[str], max_txt_len: Optional[int], **generation
    ) -> torch.Tensor:
        embeds, attn = self._prompted_inputs(soft_prompt, prompts, max_txt_len)
        generation.setdefault("eos_token_id", self.eos_token_id)
        return self.model.generate(inputs_embeds=embeds, attention_mask=attn, **generation)

    def _beam_state(
        self, soft_prompt: torch.Tensor, prompts: Sequence[str], max_txt_len: Optional[int], num_beams: int
    ) -> BeamState:
        # no start ids: as for transformers fed ``inputs_embeds``, lengths count new tokens
        embeds, attn = self._prompted_inputs(soft_prompt, prompts, max_txt_len)
        # the vocabulary-wide head on the last position only, as transformers' prefill
        out = self.model(inputs_embeds=embeds, attention_mask=attn, position_ids=_positions(attn), use_cache=True,
                         logits_to_keep=1)
        out.cache.batch_repeat_interleave(num_beams)
        # the beams of an image share its mask: it grows by a column a step and needs no reordering
        mask = attn.repeat_interleave(num_beams, 0)

        def step(tokens: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
            nonlocal mask
            mask = torch.cat([mask, torch.ones_like(tokens)], 1)
            logits = self.model(input_ids=tokens, attention_mask=mask, position_ids=mask.sum(1, keepdim=True) - 1,
                                cache=cache, use_cache=True).logits
            return logits[:, -1], cache

        start = torch.zeros((mask.shape[0], 0), dtype=torch.long, device=mask.device)
        return BeamState(out.logits[:, -1].repeat_interleave(num_beams, 0), out.cache, start, step, reorder_hf_cache)

    # -- answer ranking -------------------------------------------------------------------
    def _tokenize_answers(self, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer
        anchor = tok(_ANSWER_ANCHOR, add_special_tokens=False).input_ids
        full = tok([f"{_ANSWER_ANCHOR} {a}{self.end_of_text}" for a in answers], add_special_tokens=False).input_ids
        seqs = []
        for a, ids in zip(answers, full):
            if ids[: len(anchor)] == anchor:
                seqs.append(ids[len(anchor):])
            else:  # the anchor merged with the answer; fall back to the answer alone
                seqs.append(tok(f" {a}{self.end_of_text}", add_special_tokens=False).input_ids)
        return _pad(seqs, tok.pad_token_id)

    def _answer_prefix(
        self, soft_prompt: torch.Tensor, prompts: Sequence[str], max_txt_len: Optional[int]
    ) -> tuple[Any, torch.Tensor]:
        embeds, attn = self._prompted_inputs(soft_prompt, prompts, max_txt_len)
        out = self.model(inputs_embeds=embeds, attention_mask=attn, position_ids=_positions(attn), use_cache=True,
                         logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        return (out.cache, attn), first

    def _answer_scores(
        self, state: Any, first_logp: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        cache, attn = state
        cache = copy.deepcopy(cache)  # each chunk expands its own copy of the prefix
        cache.batch_select_indices(rows)
        prefix_attn = attn[rows]
        pos = prefix_attn.sum(1, keepdim=True) + torch.arange(ids.shape[1], device=ids.device)[None]
        logits = self.model(
            input_ids=ids,
            attention_mask=torch.cat([prefix_attn, mask], 1),
            position_ids=pos,
            cache=cache,
            use_cache=False,
        ).logits
        first = first_logp[rows, ids[:, 0]]
        return first + token_logprobs(logits[:, :-1], ids[:, 1:], mask[:, 1:])


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting from the first unpadded input (left padding gets 0)."""
    return (mask.cumsum(1) - 1).clamp(min=0)


def _pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into ``(ids, mask)``."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask
