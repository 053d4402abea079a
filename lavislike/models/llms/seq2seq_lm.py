"""Encoder-decoder LLMs (FlanT5, ...) through ``AutoModelForSeq2SeqLM``.

The soft prompt goes in front of the *encoder*'s token embeddings:
``encoder([soft prompt][prefix text])``, and the decoder produces the target text
(prefix language modelling). Following the reference, FlanT5's feed-forward activation is
exact GELU (``dense_act_fn="gelu"``) instead of the ``gelu_new`` tanh approximation its
config names; the default ``config_overrides`` apply that.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import torch
from transformers.modeling_outputs import BaseModelOutput

from lavislike.models.attention import llm_attention_kernel
from lavislike.models.losses import token_cross_entropy
from lavislike.models.llms.base import LLMAdapter, LLMConfig, token_logprobs
from lavislike.models.llms.beam_search import BeamState, reorder_hf_cache
from lavislike.registry import LLMS


def _exact_gelu() -> Dict[str, Any]:
    return {"dense_act_fn": "gelu"}


@dataclass
class Seq2SeqLMConfig(LLMConfig):
    """``llm:`` block of :class:`Seq2SeqLM` (exact-GELU override on by default)."""

    name: str = "seq2seq_lm"
    config_overrides: Dict[str, Any] = field(default_factory=_exact_gelu)


@LLMS.register("seq2seq_lm", config=Seq2SeqLMConfig)
class Seq2SeqLM(LLMAdapter):
    """A frozen encoder-decoder LLM reading the soft prompt before its encoder tokens."""

    AUTO_CLASS = "AutoModelForSeq2SeqLM"
    GPU_DTYPE = "bf16"
    DEFAULT_VQA_PROMPT = "Question: {} Short answer:"

    def _encoder_inputs(
        self, soft_prompt: torch.Tensor, texts: Sequence[str], max_txt_len: Optional[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(texts, side="right", max_length=max_txt_len)
        soft, soft_mask = self.prompt_embeds(soft_prompt)
        return torch.cat([soft, self.embed(ids)], 1), torch.cat([soft_mask, mask], 1)

    @property
    def _start_id(self) -> int:
        return int(self.model.config.decoder_start_token_id)

    def lm_loss(
        self,
        soft_prompt: torch.Tensor,
        prefixes: Sequence[str],
        targets: Sequence[str],
        max_txt_len: Optional[int] = None,
    ) -> torch.Tensor:
        """Prefix-LM loss: ``prefixes`` into the encoder after the soft prompt, ``targets``
        (EOS included, padding ignored) as the decoder's labels."""
        embeds, attn = self._encoder_inputs(soft_prompt, prefixes, max_txt_len)
        out_ids, out_mask = self.tokenize(targets, side="right", max_length=max_txt_len)
        labels = out_ids.masked_fill(out_mask == 0, -100)
        with llm_attention_kernel(embeds, self.dtype, max(embeds.shape[1], out_ids.shape[1])):
            logits = self.model(
                inputs_embeds=embeds, attention_mask=attn, decoder_attention_mask=out_mask,
                decoder_input_ids=self.model.prepare_decoder_input_ids_from_labels(labels=labels),
            ).logits
        # transformers' loss for these models (mean over labelled tokens, logits' dtype),
        # over the global batch under DDP
        return token_cross_entropy(logits.flatten(0, 1), labels.flatten())

    @property
    def eos_token_id(self) -> int:
        eos = self.model.generation_config.eos_token_id
        eos = self.tokenizer.eos_token_id if eos is None else eos
        return int(eos[0] if isinstance(eos, (list, tuple)) else eos)

    def _transformers_generate(
        self, soft_prompt: torch.Tensor, prompts: Sequence[str], max_txt_len: Optional[int], **generation
    ) -> torch.Tensor:
        embeds, attn = self._encoder_inputs(soft_prompt, prompts, max_txt_len)
        out = self.model.generate(inputs_embeds=embeds, attention_mask=attn, **generation)
        return out[:, 1:]  # the decoder start token

    def _beam_state(
        self, soft_prompt: torch.Tensor, prompts: Sequence[str], max_txt_len: Optional[int], num_beams: int
    ) -> BeamState:
        embeds, attn = self._encoder_inputs(soft_prompt, prompts, max_txt_len)
        enc = BaseModelOutput(self.model.get_encoder()(inputs_embeds=embeds, attention_mask=attn).last_hidden_state)
        start = torch.full((attn.shape[0], 1), self._start_id, dtype=torch.long, device=attn.device)

        def step(tokens: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
            out = self.model(encoder_outputs=enc, attention_mask=attn, decoder_input_ids=tokens, cache=cache,
                             use_cache=True)
            return out.logits[:, -1], out.cache

        # the decoder start once per image (with it the cross-attention keys/values of the
        # encoder output); then the cache, the encoder output and its mask are widened to the beams
        logits, cache = step(start, None)
        cache.batch_repeat_interleave(num_beams)
        enc = BaseModelOutput(enc.last_hidden_state.repeat_interleave(num_beams, 0))
        attn = attn.repeat_interleave(num_beams, 0)
        return BeamState(logits.repeat_interleave(num_beams, 0), cache, start.repeat_interleave(num_beams, 0), step,
                         reorder_hf_cache)

    # -- answer ranking -------------------------------------------------------------------
    def _tokenize_answers(self, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer
        tok.padding_side = "right"
        out = tok(list(answers), padding="longest", return_tensors="pt")
        return out.input_ids, out.attention_mask

    def _answer_prefix(
        self, soft_prompt: torch.Tensor, prompts: Sequence[str], max_txt_len: Optional[int]
    ) -> tuple[Any, torch.Tensor]:
        embeds, attn = self._encoder_inputs(soft_prompt, prompts, max_txt_len)
        enc = self.model.get_encoder()(inputs_embeds=embeds, attention_mask=attn).last_hidden_state
        start = torch.full((enc.shape[0], 1), self._start_id, dtype=torch.long, device=enc.device)
        logits = self.model(encoder_outputs=BaseModelOutput(enc), attention_mask=attn, decoder_input_ids=start).logits
        return (enc, attn), torch.log_softmax(logits[:, 0].float(), dim=-1)

    def _answer_scores(
        self, state: Any, first_logp: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        enc, attn = state
        start = torch.full((ids.shape[0], 1), self._start_id, dtype=torch.long, device=ids.device)
        dec_ids = torch.cat([start, ids[:, :-1]], 1)
        dec_mask = torch.cat([torch.ones_like(start), mask[:, :-1]], 1)
        logits = self.model(
            encoder_outputs=BaseModelOutput(enc[rows]),
            attention_mask=attn[rows],
            decoder_input_ids=dec_ids,
            decoder_attention_mask=dec_mask,
        ).logits
        return token_logprobs(logits, ids, mask)
