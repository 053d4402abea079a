"""Stage-2 BLIP-2 models: the stage-1 composition + a projection + a frozen LLM.

``image encoder -> ln_vision -> Q-Former queries -> llm_proj -> LLM adapter``. The LLM is
any :data:`~lavislike.registry.LLMS` entry (``causal_lm`` for OPT / LLaMA-style models,
``seq2seq_lm`` for FlanT5), so ``blip2_opt`` and ``blip2_t5`` are two configurations of the
same class with different model types, not two forks.

Registered names (as in LAVIS): ``blip2_opt`` (types ``pretrain_opt2.7b``,
``pretrain_opt6.7b``, ``caption_coco_opt2.7b``, ``caption_coco_opt6.7b``, ``tiny``) and
``blip2_t5`` (``pretrain_flant5xl``, ``pretrain_flant5xl_vitL``, ``pretrain_flant5xxl``,
``caption_coco_flant5xl``, ``tiny``).

Example:
    >>> from lavislike.models import load_model
    >>> model = load_model("blip2_opt", "caption_coco_opt2.7b", is_eval=True, device="cuda")
    >>> model.generate({"image": images})                      # captions
    >>> model.predict_answers({"image": images, "text_input": ["what is it?"]})
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from lavislike.errors import ConfigError, DataError
from lavislike.models.base import Blip2Base, Blip2BaseConfig
from lavislike.models.convert.hf import HF_DROP
from lavislike.models.convert.hf_llm import HF_LLM
from lavislike.models.convert.lavis import LAVIS_DROP, convert_lavis_state
from lavislike.models.convert.lavis_llm import LAVIS_LLM_ALLOW_MISSING, drop_unused, lavis_llm_table, tied_duplicates
from lavislike.models.qformer import QFormerConfig
from lavislike.registry import LLMS, MODELS


def _query_only_qformer() -> QFormerConfig:
    # stage 2 reads only the queries: no text embeddings, text FFNs or LM head (as LAVIS,
    # which deletes them; they are ~80M parameters nobody trains here)
    return QFormerConfig(text_input=False, lm_head=False)


@dataclass
class Blip2LLMConfig(Blip2BaseConfig):
    """Stage-2 keys on top of :class:`~lavislike.models.base.Blip2BaseConfig`.

    Attributes:
        llm: ``{name: causal_lm | seq2seq_lm, path: <hub id or folder>, ...}``; typed by
            the LLM adapter's schema.
        prompt: text after the visual prompt in captioning (``"a photo of"`` for the COCO
            captioners); in training it is the part of each caption without loss.
        vqa_prompt: template for :meth:`Blip2LLM.predict_answers`; None = the paper's
            (``Question: {} Answer:`` for decoder-only, ``Question: {} Short answer:``
            for encoder-decoder LLMs).
        prefix_lm_min_words: encoder-decoder training on plain captions (no
            ``text_output``, no prompt) splits each caption at a random word; the
            encoder gets at least this many words and the decoder at least one.
    """

    qformer: QFormerConfig = field(default_factory=_query_only_qformer)
    llm: Optional[Any] = None
    prompt: str = ""
    vqa_prompt: Optional[str] = None
    prefix_lm_min_words: int = 1


class Blip2LLM(Blip2Base):
    """BLIP-2 with a frozen LLM: captioning, instructed generation and zero-shot VQA.

    Args:
        cfg: the merged model config (:class:`Blip2LLMConfig` keys).
    """

    MODEL_TYPES: dict[str, str] = {}
    DEFAULT_MODEL_TYPE: Optional[str] = None

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        block = cfg.llm
        if block is None or "name" not in block:
            raise ConfigError(f"model '{cfg.get('arch')}': model.llm needs a 'name' ({', '.join(LLMS.names())})")
        self.llm = LLMS.get(block.name).from_config(block)
        self.llm_proj = nn.Linear(self.qformer.cfg.hidden_size, self.llm.hidden_size)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "Blip2LLM":
        return cls(cfg)

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(self.llm.model.config.is_encoder_decoder)

    # -- checkpoints -------------------------------------------------------------------
    HF_KEYMAP = HF_LLM
    HF_DROP = HF_DROP

    def convert_lavis_state(self, state: dict, source: str = "LAVIS checkpoint") -> dict:
        """A LAVIS stage-1 or stage-2 state dict under this model's keys."""
        table = lavis_llm_table(self.is_encoder_decoder)
        out = convert_lavis_state(state, self.image_encoder, table, LAVIS_DROP, source)
        return drop_unused(out, self.state_dict().keys())

    def convert_hf_state(self, state: dict, source: str = "Hugging Face checkpoint") -> dict:
        return drop_unused(super().convert_hf_state(state, source), self.state_dict().keys())

    def allowed_missing(self, fmt: str) -> tuple[str, ...]:
        """LAVIS files lack the frozen parts and (stage 1) the projection; every format
        stores tied LLM embeddings once."""
        allow = super().allowed_missing(fmt) + tied_duplicates(self.llm.model, "llm.model.")
        return allow + LAVIS_LLM_ALLOW_MISSING if fmt == "lavis" else allow

    def tie_weights(self) -> None:
        super().tie_weights()
        self.llm.model.tie_weights()

    def init_missing_(self, names: set[str]) -> None:
        super().init_missing_({n for n in names if not n.startswith(("llm.", "llm_proj."))})
        if "llm_proj.weight" in names:
            self.llm_proj.reset_parameters()
        llm_missing = {n[len("llm.model."):] for n in names if n.startswith("llm.model.")}
        if llm_missing:
            # a random LLM (no weights anywhere): its own initialisation, module by module
            for prefix, module in self.llm.model.named_modules():
                own = {f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)}
                if own & llm_missing:
                    self.llm.model._init_weights(module)
            self.llm.model.tie_weights()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Trained parameters and buffers; nothing of a frozen LLM (it comes from ``llm.path``)."""
        out = super().trainable_state_dict()
        if self.cfg.llm.get("freeze", True):
            out = {k: v for k, v in out.items() if not k.startswith("llm.")}
        return out

    # -- the visual prompt -------------------------------------------------------------
    def soft_prompt(self, image: torch.Tensor) -> torch.Tensor:
        """Projected query outputs ``(B, Q, D_llm)``: the visual prompt the LLM reads."""
        return self.llm_proj(self.query_outputs(self.encode_image(image)))

    # -- training -----------------------------------------------------------------------
    def forward(self, samples: dict) -> dict:
        """LM loss (decoder-only) or prefix-LM loss (encoder-decoder) on a batch.

        Decoder-only: ``prompt + text_input`` followed by the end-of-text token, loss on the
        text only (queries and prompt masked). With ``text_output`` the (prompt-formatted)
        ``text_input`` is the masked part and ``text_output`` the target.
        Encoder-decoder: ``text_input`` into the encoder and ``text_output`` as the target;
        without ``text_output`` the prompt (if any) is the encoder text and ``text_input``
        the target, else each caption is split at a random word (prefix language
        modelling as in the paper).

        Returns:
            ``{"loss", "loss_lm"}``.
        """
        image = _require(samples, "image")
        texts = _as_list(_require(samples, "text_input"))
        prompts = self._prompts(samples.get("prompt", self.cfg.prompt), len(texts))
        outputs = samples.get("text_output")
        if self.is_encoder_decoder:
            prefixes, targets = self._seq2seq_texts(texts, prompts, outputs)
        else:
            prefixes, targets = self._causal_texts(texts, prompts, outputs)
        loss = self.llm.lm_loss(self.soft_prompt(image), prefixes, targets, self.cfg.max_txt_len)
        return {"loss": loss, "loss_lm": loss}

    @staticmethod
    def _causal_texts(
        texts: list[str], prompts: list[str], outputs: Optional[Sequence[str]]
    ) -> tuple[list[str], list[str]]:
        if outputs is not None:
            prefixes = [_fill(p, t) for p, t in zip(prompts, texts)]
            return prefixes, [" " + o.strip() for o in _as_list(outputs)]
        # captions from a prompted text processor already start with the prompt (LAVIS);
        # others get it in front
        prefixes, targets = [], []
        for p, t in zip(prompts, texts):
            if p and not t.startswith(p):
                t = f"{p.rstrip()} {t.lstrip()}"
            prefixes.append(p)
            targets.append(t[len(p):])
        return prefixes, targets

    def _seq2seq_texts(
        self, texts: list[str], prompts: list[str], outputs: Optional[Sequence[str]]
    ) -> tuple[list[str], list[str]]:
        if outputs is not None:
            return [_fill(p, t) for p, t in zip(prompts, texts)], list(_as_list(outputs))
        if any(prompts):
            return prompts, [t[len(p):].strip() if p and t.startswith(p) else t for p, t in zip(prompts, texts)]
        return _prefix_lm_split(texts, int(self.cfg.prefix_lm_min_words))

    @staticmethod
    def _prompts(prompt: Any, n: int) -> list[str]:
        """One prompt per sample from a string or a list (checked against the batch size)."""
        if prompt is None:
            return [""] * n
        if isinstance(prompt, str):
            return [prompt] * n
        prompt = [str(p) for p in prompt]
        if len(prompt) != n:
            raise DataError(f"samples['prompt'] has {len(prompt)} prompts for {n} images; give one string or one per image")
        return prompt

    # -- inference ----------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        samples: dict,
        use_nucleus_sampling: bool = False,
        num_beams: int = 5,
        max_length: int = 30,
        min_length: int = 1,
        top_p: float = 0.9,
        repetition_penalty: float = 1.0,
        length_penalty: float = 1.0,
        num_captions: int = 1,
        temperature: float = 1,
    ) -> list[str]:
        """Captions (or answers to ``samples["prompt"]``) generated by the LLM.

        Args:
            samples: ``image`` (B, 3, H, W); optional ``prompt`` (one string or one per
                image; default: the model's ``prompt``).
            use_nucleus_sampling: sample with ``top_p`` / ``temperature`` instead of beams.
            num_beams: beam width (1 = greedy).
            max_length / min_length: number of generated tokens (prompt not counted).
            top_p: nucleus mass when sampling.
            repetition_penalty: > 1 discourages repeats.
            length_penalty: beam-score length exponent (< 0 favours short outputs).
            num_captions: outputs per image.
            temperature: sampling temperature.

        Returns:
            ``B * num_captions`` strings, image-major.
        """
        image = _require(samples, "image")
        prompts = self._prompts(samples.get("prompt", self.cfg.prompt), image.shape[0])
        generation = self.llm.generation_kwargs(
            use_nucleus_sampling=use_nucleus_sampling, num_beams=num_beams, max_length=max_length,
            min_length=min_length, top_p=top_p, repetition_penalty=repetition_penalty,
            length_penalty=length_penalty, num_captions=num_captions, temperature=temperature,
        )
        ids = self.llm.generate_ids(self.soft_prompt(image), prompts, self.cfg.max_txt_len, **generation)
        return self.llm.decode(ids)

    @torch.no_grad()
    def predict_answers(
        self,
        samples: dict,
        num_beams: int = 5,
        inference_method: str = "generate",
        max_len: int = 10,
        min_len: int = 1,
        num_ans_candidates: int = 128,
        answer_list: Optional[Sequence[str]] = None,
        prompt: Optional[str] = None,
        length_penalty: float = -1,
    ) -> list[str]:
        """Zero-shot VQA: one answer per question.

        Args:
            samples: ``image`` (B, 3, H, W) and ``text_input`` (B questions).
            num_beams: beam width for ``generate``.
            inference_method: ``"generate"`` (open-ended, beam search) or ``"rank"`` (the
                most likely of ``answer_list`` under the LLM).
            max_len / min_len: generated answer length in tokens.
            num_ans_candidates: ``rank`` short-lists this many answers per question by
                their first token before scoring them in full.
            answer_list: candidate answers for ``rank``.
            prompt: template with ``{}`` for the question; None = ``vqa_prompt`` or the
                paper's prompt for the LLM family; ``""`` = the bare question.
            length_penalty: beam-score length exponent (-1 favours short answers).
        """
        image = _require(samples, "image")
        questions = _as_list(_require(samples, "text_input"))
        template = prompt if prompt is not None else (self.cfg.vqa_prompt or self.llm.DEFAULT_VQA_PROMPT)
        texts = [_fill(template, q) for q in questions]
        soft = self.soft_prompt(image)
        if inference_method == "generate":
            generation = self.llm.generation_kwargs(
                num_beams=num_beams, max_length=max_len, min_length=min_len, length_penalty=length_penalty
            )
            return self.llm.decode(self.llm.generate_ids(soft, texts, self.cfg.max_txt_len, **generation))
        if inference_method == "rank":
            if not answer_list:
                raise ConfigError("predict_answers(inference_method='rank') needs an answer_list")
            scores = self.llm.rank_answers(
                soft, texts, list(answer_list), self.cfg.max_txt_len, num_candidates=num_ans_candidates
            )
            return [answer_list[i] for i in scores.argmax(1).tolist()]
        raise ConfigError(f"inference_method '{inference_method}' is not one of generate, rank")

    # -- export -------------------------------------------------------------------------
    def save_hf(self, folder) -> None:
        """Write a ``Blip2ForConditionalGeneration`` folder (weights, config, tokenizer)."""
        from lavislike.models.convert.hf_llm import save_hf_llm

        save_hf_llm(self, folder)


@MODELS.register("blip2_opt", config=Blip2LLMConfig)
class Blip2OPT(Blip2LLM):
    """BLIP-2 with a decoder-only LLM (OPT by default; any causal LM through its YAML)."""

    MODEL_TYPES = {
        "pretrain_opt2.7b": "blip2_opt/pretrain_opt2.7b.yaml",
        "pretrain_opt6.7b": "blip2_opt/pretrain_opt6.7b.yaml",
        "caption_coco_opt2.7b": "blip2_opt/caption_coco_opt2.7b.yaml",
        "caption_coco_opt6.7b": "blip2_opt/caption_coco_opt6.7b.yaml",
        "tiny": "blip2_opt/tiny.yaml",
    }
    DEFAULT_MODEL_TYPE = "pretrain_opt2.7b"


@MODELS.register("blip2_t5", config=Blip2LLMConfig)
class Blip2T5(Blip2LLM):
    """BLIP-2 with an encoder-decoder LLM (FlanT5 by default)."""

    MODEL_TYPES = {
        "pretrain_flant5xl": "blip2_t5/pretrain_flant5xl.yaml",
        "pretrain_flant5xl_vitL": "blip2_t5/pretrain_flant5xl_vitL.yaml",
        "pretrain_flant5xxl": "blip2_t5/pretrain_flant5xxl.yaml",
        "caption_coco_flant5xl": "blip2_t5/caption_coco_flant5xl.yaml",
        "tiny": "blip2_t5/tiny.yaml",
    }
    DEFAULT_MODEL_TYPE = "pretrain_flant5xl"


# -- helpers ------------------------------------------------------------------------------
def _fill(template: str, text: str) -> str:
    """``template.format(text)`` when it has a ``{}``; else ``template + " " + text``."""
    if not template:
        return text
    if "{}" in template:
        return template.format(text)
    return f"{template.rstrip()} {text}"


def _prefix_lm_split(texts: Sequence[str], min_words: int) -> tuple[list[str], list[str]]:
    """Split each caption at a random word boundary: (encoder prefix, decoder target)."""
    prefixes, targets = [], []
    for text in texts:
        words = text.split()
        if len(words) <= min_words:
            prefixes.append("")
            targets.append(text.strip())
            continue
        cut = int(torch.randint(min_words, len(words), ()).item())
        prefixes.append(" ".join(words[:cut]))
        targets.append(" ".join(words[cut:]))
    return prefixes, targets


def _as_list(value: Any) -> list:
    return [value] if isinstance(value, str) else list(value)


def _require(samples: dict, key: str):
    if key not in samples:
        raise DataError(f"the batch has no '{key}' (keys: {', '.join(sorted(samples))})")
    return samples[key]
