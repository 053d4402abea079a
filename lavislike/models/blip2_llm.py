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

Question-aware queries (``qformer_text_input: true``, the paper's VQA fine-tuning; LAVIS
InstructBLIP's name): the question (for captioning, the prompt) is tokenised with the
Q-Former's BERT tokenizer and joins the queries in the Q-Former's self-attention; only the
query positions go through ``llm_proj`` into the LLM.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from lavislike.errors import CheckpointError, ConfigError, DataError
from lavislike.models.base import Blip2Base, Blip2BaseConfig
from lavislike.models.convert.hf import HF_DROP
from lavislike.models.convert.hf_llm import HF_LLM
from lavislike.models.convert.lavis import LAVIS_DROP, convert_lavis_state
from lavislike.models.convert.lavis_llm import (
    LAVIS_LLM_ALLOW_MISSING,
    STAGE2_ONLY,
    drop_unused,
    is_stage1_state,
    lavis_llm_table,
    tied_duplicates,
)
from lavislike.models.generation import GenerationOutput
from lavislike.models.qformer import QFormerConfig
from lavislike.registry import LLMS, MODELS


# the Q-Former's text parts: what question-aware queries need and stage-2 LAVIS files lack
QFORMER_TEXT_PARTS: tuple[str, ...] = (
    r"qformer\.embeddings\.(word|position)_embeddings\..*",
    r"qformer\.layers\.\d+\.text_ffn\..*",
)


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
        qformer_text_input: question-aware queries: the question (``text_input`` of a
            batch with ``text_output``, and of ``predict_answers``; otherwise the prompt)
            joins the queries in the Q-Former. Builds the Q-Former's text embeddings and
            text FFNs whatever ``qformer.text_input`` says.
        qformer_text_from: a checkpoint (LAVIS ``.pth`` or lavislike) to read the
            Q-Former's text parts from when the loaded checkpoint lacks them, as LAVIS
            stage-2 files do (they are stage 1's: stage 2 never trains them), e.g. the
            stage-1 ``blip2_pretrained.pth``.
    """

    qformer: QFormerConfig = field(default_factory=_query_only_qformer)
    llm: Optional[Any] = None
    prompt: str = ""
    vqa_prompt: Optional[str] = None
    prefix_lm_min_words: int = 1
    qformer_text_input: bool = False
    qformer_text_from: Optional[str] = None


class Blip2LLM(Blip2Base):
    """BLIP-2 with a frozen LLM: captioning, instructed generation and zero-shot VQA.

    Args:
        cfg: the merged model config (:class:`Blip2LLMConfig` keys).
    """

    MODEL_TYPES: dict[str, str] = {}
    DEFAULT_MODEL_TYPE: Optional[str] = None

    def __init__(self, cfg: DictConfig):
        if cfg.get("qformer_text_input", False) and not cfg.qformer.get("text_input", False):
            # in place, so the saved config describes the Q-Former that was built
            cfg.qformer.text_input = True
        super().__init__(cfg)
        self._freeze_unused_qformer_parts()
        block = cfg.llm
        if block is None or "name" not in block:
            raise ConfigError(f"model '{cfg.get('arch')}': model.llm needs a 'name' ({', '.join(LLMS.names())})")
        self.llm = LLMS.get(block.name).from_config(block)
        self.llm_proj = nn.Linear(self.qformer.cfg.hidden_size, self.llm.hidden_size)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "Blip2LLM":
        return cls(cfg)

    def _freeze_unused_qformer_parts(self) -> None:
        """Freeze the Q-Former parts stage 2 never runs: they would get no gradient, which
        DDP rejects ("parameters that were not used") and AdamW's weight decay would
        still shrink. Without question-aware queries: every text part
        (``qformer.text_input: true`` alone builds them); with them: the last layer's text
        FFN (its text outputs are discarded) and the LM head."""
        q = self.qformer
        unused = [q.lm_head]
        if self.question_aware:
            unused.append(q.layers[-1].text_ffn)
        else:
            unused += [q.embeddings.word_embeddings, q.embeddings.position_embeddings]
            unused += [layer.text_ffn for layer in q.layers]
        names = {m: n for n, m in q.named_modules()}
        prefixes = tuple(names[m] + "." for m in unused if m is not None)
        if not prefixes:
            return
        params = list(q.named_parameters(remove_duplicate=False))
        # a tied LM head shares the word embeddings, which question-aware queries train
        used = {id(p) for n, p in params if not n.startswith(prefixes)}
        for n, p in params:
            if n.startswith(prefixes) and id(p) not in used:
                p.requires_grad_(False)

    @property
    def question_aware(self) -> bool:
        """True when the question (or prompt) joins the queries in the Q-Former."""
        return bool(self.cfg.get("qformer_text_input", False))

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

    def allowed_missing(self, fmt: str, state: Optional[dict] = None) -> tuple[str, ...]:
        """LAVIS files lack the frozen parts and (stage 1) the projection; every format
        stores tied LLM embeddings once. A ``state`` without any LLM or projection key is a
        stage-1 checkpoint, in any format: those are initialised here."""
        allow = super().allowed_missing(fmt, state) + tied_duplicates(self.llm.model, "llm.model.")
        if self.question_aware:
            allow = allow + QFORMER_TEXT_PARTS  # filled by init_missing_ from qformer_text_from
        if fmt == "lavis":
            return allow + LAVIS_LLM_ALLOW_MISSING
        return allow + STAGE2_ONLY if state is not None and is_stage1_state(state) else allow

    def external_weight_prefixes(self) -> tuple[str, ...]:
        """The frozen LLM when its weights are read from ``llm.path`` (they stay there)."""
        if self.cfg.llm.get("freeze", True) and self.llm.weights_from_path:
            return ("llm.",)
        return ()

    def tie_weights(self) -> None:
        super().tie_weights()
        self.llm.model.tie_weights()  # the LM head only where it is meant to be tied

    def follow_state_layout_(self, state: dict) -> None:
        """Before loading ``state``: its LLM head tied or apart, as it holds it."""
        self.llm.follow_state_tying_(state, "llm.model.")

    def init_missing_(self, names: set[str]) -> None:
        names = self._load_missing_text_parts(names)
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

    def _load_missing_text_parts(self, names: set[str]) -> set[str]:
        """Copy the missing Q-Former text parts from ``qformer_text_from``; returns the
        names still to initialise (the unused last-layer text FFN may stay random)."""
        pattern = re.compile("|".join(f"(?:{p})" for p in QFORMER_TEXT_PARTS))
        unused = f"qformer.layers.{len(self.qformer.layers) - 1}.text_ffn."
        wanted = {n for n in names if pattern.fullmatch(n) and not n.startswith(unused)}
        if not wanted:
            return names
        source = self.cfg.get("qformer_text_from")
        if not source:
            raise CheckpointError(
                f"the checkpoint has no Q-Former text parts ({sorted(wanted)[0]}, ...), which "
                "model.qformer_text_input=true needs (LAVIS stage-2 files drop them); set "
                "model.qformer_text_from to a checkpoint holding them, e.g. the stage-1 blip2_pretrained.pth"
            )
        state = self._read_text_parts(str(source))
        lacking = sorted(wanted - set(state))
        if lacking:
            raise CheckpointError(f"model.qformer_text_from='{source}' has no {lacking[0]} either")
        own = dict(self.named_parameters())
        with torch.no_grad():
            for name in wanted:
                if state[name].shape != own[name].shape:
                    raise CheckpointError(
                        f"model.qformer_text_from='{source}': {name} has shape {tuple(state[name].shape)}, "
                        f"the model needs {tuple(own[name].shape)}"
                    )
                own[name].copy_(state[name])
        return names - wanted

    def _read_text_parts(self, source: str) -> dict[str, torch.Tensor]:
        """The Q-Former text parts of a LAVIS ``.pth`` or lavislike checkpoint, in our keys."""
        from lavislike.common.paths import require_local
        from lavislike.models.loading import checkpoint_format, read_state

        require_local(source, "model.qformer_text_from", CheckpointError)
        fmt = checkpoint_format(source)
        if fmt == "lavis":
            from lavislike.models.image_encoders.weights import load_weights

            # only the Q-Former rows: converting a stage-1 file's image encoder is wasted work
            raw = {k: v for k, v in load_weights(source).items() if k.startswith("Qformer.bert.")}
            state = self.convert_lavis_state(raw, source)
        elif fmt == "lavislike":
            state, _, _ = read_state(self, source)
        else:
            raise ConfigError(
                f"model.qformer_text_from='{source}' is a {fmt} checkpoint; give a LAVIS .pth "
                "or a lavislike checkpoint"
            )
        return {k: v for k, v in state.items() if k.startswith("qformer.")}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Trained parameters and buffers; nothing of a frozen LLM (it comes from ``llm.path``)."""
        out = super().trainable_state_dict()
        if self.cfg.llm.get("freeze", True):
            out = {k: v for k, v in out.items() if not k.startswith("llm.")}
        return out

    # -- the visual prompt -------------------------------------------------------------
    def soft_prompt(self, image: Optional[torch.Tensor], texts: Optional[Sequence[str]] = None, *,
                    image_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Projected query outputs ``(B, Q, D_llm)``: the visual prompt the LLM reads.

        Args:
            image: (B, 3, H, W); None when ``image_embeds`` is given.
            texts: one question (or prompt) per image; with ``qformer_text_input`` it joins
                the queries in the Q-Former (required then), otherwise it is ignored.
            image_embeds: (B, P, C) image features after ``ln_vision`` (:meth:`image_embeds`).
        """
        embeds = self.encode_image(image) if image_embeds is None else image_embeds
        if not self.question_aware:
            return self.llm_proj(self.query_outputs(embeds))
        if texts is None:
            raise DataError("model.qformer_text_input=true: soft_prompt needs the question (or prompt) texts")
        texts = _as_list(texts)
        if len(texts) != embeds.shape[0]:
            raise DataError(f"{len(texts)} Q-Former texts for {embeds.shape[0]} images; give one per image")
        ids, mask = self.tokenize(texts)
        return self.llm_proj(self.query_outputs(embeds, ids, mask))

    # -- training -----------------------------------------------------------------------
    def forward(self, samples: dict) -> dict:
        """LM loss (decoder-only) or prefix-LM loss (encoder-decoder) on a batch.

        Decoder-only: ``prompt + text_input`` followed by the end-of-text token, loss on the
        text only (queries and prompt masked). With ``text_output`` the (prompt-formatted)
        ``text_input`` is the masked part and ``text_output`` the target.
        Encoder-decoder: ``text_input`` into the encoder as it is (no prompt added, as
        LAVIS) and ``text_output`` as the target; without ``text_output`` captions that all
        start with the prompt (a prompted text processor) are split there, others at a
        random word (prefix language modelling as in the paper).
        With ``qformer_text_input`` the Q-Former also reads ``text_input`` when the batch has
        ``text_output`` (the question) and the prompts otherwise (never the caption).

        Returns:
            ``{"loss", "loss_lm"}``.
        """
        embeds = self.image_embeds(samples)
        texts = _as_list(_require(samples, "text_input"))
        prompts = self._prompts(samples.get("prompt", self.cfg.prompt), len(texts))
        outputs = samples.get("text_output")
        if self.is_encoder_decoder:
            prefixes, targets = self._seq2seq_texts(texts, prompts, outputs)
        else:
            prefixes, targets = self._causal_texts(texts, prompts, outputs)
        # the Q-Former reads the question, never the target: a caption's prompt instead
        soft = self.soft_prompt(None, texts if outputs is not None else prompts, image_embeds=embeds)
        loss = self.llm.lm_loss(soft, prefixes, targets, self.cfg.max_txt_len)
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
        # text_input goes to the encoder as it is: the prompt is never added in training
        # (LAVIS's Blip2T5.forward); it belongs to generate / predict_answers
        if outputs is not None:
            return list(texts), list(_as_list(outputs))
        if any(p and all(t.startswith(p) for t in texts) for p in prompts):
            # captions from a prompted text processor: the prompt they start with is the
            # encoder text, the rest the target
            return prompts, [t[len(p):].strip() for p, t in zip(prompts, texts)]
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
        return_ids: bool = False,
        beam_search: str = "lavis",
    ) -> list[str] | GenerationOutput:
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
            return_ids: return a :class:`~lavislike.models.generation.GenerationOutput`
                (texts and the generated token ids, prompt and decoder start excluded).
            beam_search: ``"lavis"`` (LAVIS's transformers 4.33 rules) or ``"transformers"``
                (the installed transformers' ``generate``, as its BLIP-2 port);
                :mod:`lavislike.models.llms.beam_search`.

        Returns:
            ``B * num_captions`` strings, image-major.
        """
        embeds = self.image_embeds(samples)
        prompts = self._prompts(samples.get("prompt", self.cfg.prompt), embeds.shape[0])
        generation = self.llm.generation_kwargs(
            use_nucleus_sampling=use_nucleus_sampling, num_beams=num_beams, max_length=max_length,
            min_length=min_length, top_p=top_p, repetition_penalty=repetition_penalty,
            length_penalty=length_penalty, num_captions=num_captions, temperature=temperature,
        )
        ids = self.llm.generate_ids(self.soft_prompt(None, prompts, image_embeds=embeds), prompts,
                                    self.cfg.max_txt_len, beam_search, **generation)
        texts = self.llm.decode(ids)
        return GenerationOutput(texts, ids) if return_ids else texts

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
        beam_search: str = "lavis",
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
            beam_search: ``"lavis"`` or ``"transformers"``, as in :meth:`generate`.
        """
        embeds = self.image_embeds(samples)
        questions = _as_list(_require(samples, "text_input"))
        template = prompt if prompt is not None else (self.cfg.vqa_prompt or self.llm.DEFAULT_VQA_PROMPT)
        texts = [_fill(template, q) for q in questions]
        soft = self.soft_prompt(None, questions, image_embeds=embeds)
        if inference_method == "generate":
            generation = self.llm.generation_kwargs(
                num_beams=num_beams, max_length=max_len, min_length=min_len, length_penalty=length_penalty
            )
            return self.llm.decode(self.llm.generate_ids(soft, texts, self.cfg.max_txt_len, beam_search, **generation))
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
