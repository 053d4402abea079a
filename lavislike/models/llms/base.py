"""Frozen Hugging Face language models behind one small interface.

A stage-2 BLIP-2 model hands an LLM adapter a *soft prompt* (the projected Q-Former
outputs, ``(B, Q, D)`` in the LLM's embedding width) plus text, and the adapter does
whatever its model family needs: where the soft prompt goes (in front of a decoder's
tokens, or in front of an encoder's), how text is tokenized and padded, how the loss,
generation and answer likelihoods are computed. Any model that ``transformers`` builds
through its Auto classes works; no model code is vendored.

Interface used by :mod:`lavislike.models.blip2_llm`:

* ``hidden_size`` - the width the soft prompt must have;
* ``lm_loss(soft_prompt, prefixes, targets, max_txt_len) -> loss``;
* ``generate_ids(soft_prompt, prompts, max_txt_len, beam_search, **generation) -> LongTensor``
  and ``decode(ids) -> list[str]``;
* ``rank_answers(soft_prompt, prompts, answers, max_txt_len, num_candidates) -> (B, K)``
  log-likelihood of every answer (``-inf`` outside the short-list).
"""
from __future__ import annotations

import abc
import functools
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from lavislike.common.paths import require_local, resolve_package_path
from lavislike.common.suggest import did_you_mean
from lavislike.errors import CheckpointError, ConfigError
from lavislike.models.image_encoders.weights import require_tokenizer
from lavislike.models.llms.beam_search import BeamState, lavis_beam_search, uses_lavis_loop
from lavislike.models.llms.tying import declared_tied, embedding_names, is_tied, set_tied_, tying_in_state
from lavislike.models.meta_init import real_parameters


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class LLMConfig:
    """The ``llm:`` block shared by every adapter.

    Attributes:
        name: registry name of the adapter (``causal_lm`` or ``seq2seq_lm``).
        path: Hugging Face hub id or local folder holding the LLM (config, weights,
            tokenizer).
        tokenizer: where to read the tokenizer from (folder, hub id or ``pkg:<module>/<dir>``);
            None = ``path``.
        dtype: ``fp32`` / ``fp16`` / ``bf16``; None = the adapter's GPU default (fp16 for
            decoder-only, bf16 for encoder-decoder) on a GPU and fp32 elsewhere.
        freeze: keep the LLM frozen (no gradients to its weights, eval mode always).
        load_weights: read the pre-trained weights; false builds a random model from the
            config (tests, meta-device sizing, or when a checkpoint supplies the weights).
        hf_config: a complete ``transformers`` config as a dict (with ``model_type``);
            when given, ``path``'s ``config.json`` is not read.
        config_overrides: values set on the ``transformers`` config after it is read.
        attn_implementation: ``sdpa`` (default), ``eager`` or another implementation
            ``transformers`` knows.
    """

    name: str = "causal_lm"
    path: Optional[str] = None
    tokenizer: Optional[str] = None
    dtype: Optional[str] = None
    freeze: bool = True
    load_weights: bool = True
    hf_config: Optional[Dict[str, Any]] = None
    config_overrides: Dict[str, Any] = field(default_factory=dict)
    attn_implementation: Optional[str] = "sdpa"


def resolve_dtype(dtype: Optional[str], gpu_default: str, device: torch.device) -> torch.dtype:
    """The torch dtype for ``llm.dtype`` (None = ``gpu_default`` on CUDA, fp32 otherwise)."""
    if dtype is None:
        dtype = gpu_default if device.type == "cuda" else "fp32"
    if dtype not in DTYPES:
        raise ConfigError(f"llm.dtype='{dtype}' is not valid.{did_you_mean(dtype, DTYPES)} Use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _plain(obj: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (transformers configs want plain types)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return obj


@functools.lru_cache(maxsize=1)
def _known_configs() -> dict:
    from pathlib import Path

    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(Path(__file__).with_name("known_configs.yaml")))


def known_config(path: Optional[str]) -> Optional[dict]:
    """The architecture facts ``known_configs.yaml`` keeps for hub id ``path`` (or None);
    a copy, free to change."""
    facts = _known_configs().get(path)
    return dict(facts) if facts is not None else None


def _local_config_folder(path: str) -> Optional[str]:
    """The folder holding ``path``'s config.json on this machine (a local folder or the hub
    cache), without any network request (``local_files_only`` still makes one), or None."""
    from pathlib import Path

    if (Path(path) / "config.json").is_file():
        return path
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(path, "config.json")
    return str(Path(cached).parent) if isinstance(cached, str) else None


def _kept_config(path: Optional[str]) -> Optional[str | dict]:
    """For a hub id whose facts ``known_configs.yaml`` keeps: the local folder holding its
    config.json (:func:`_local_config_folder`), else the kept facts; None for other paths.
    No network is asked for such a model (offline, the hub costs minutes of retries)."""
    known = known_config(path)
    if known is None:
        return None
    local = _local_config_folder(str(path))
    return local if local is not None else known


def build_hf_config(cfg: Any, known_fallback: bool = False):
    """The ``transformers`` config for ``cfg`` (``hf_config`` dict or ``path``'s config.json).

    Args:
        known_fallback: when ``path``'s config.json cannot be read, use the facts
            ``known_configs.yaml`` keeps for it (for builds that read no weights from ``path``).
    """
    from transformers import AutoConfig

    overrides = dict(_plain(cfg.config_overrides) or {})
    data = dict(_plain(cfg.hf_config)) if cfg.hf_config is not None else None
    # a build that reads no weights needs no network: the hub's file when it is cached,
    # else the kept facts (the same model)
    kept = _kept_config(cfg.path) if data is None and known_fallback else None
    if isinstance(kept, str):
        return AutoConfig.from_pretrained(kept, **overrides)
    if kept is not None:
        data = kept
    if data is not None:
        model_type = data.pop("model_type", None)
        if model_type is None:
            raise ConfigError("llm.hf_config needs a 'model_type' (e.g. opt, t5, llama)")
        data.update(overrides)
        try:
            return AutoConfig.for_model(model_type, **data)
        except ValueError as exc:
            raise ConfigError(f"llm.hf_config: {exc}") from None
    if not cfg.path:
        raise ConfigError("llm.path is not set: give a Hugging Face hub id or a local folder")
    require_local(cfg.path, "model.llm.path", CheckpointError)
    try:
        return AutoConfig.from_pretrained(str(cfg.path), **overrides)
    except OSError as exc:
        raise CheckpointError(
            f"llm.path='{cfg.path}': cannot read its config.json ({' '.join(str(exc).split())})"
        ) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def raw_config(cfg: Any) -> dict:
    """The LLM config as written (``hf_config`` or ``path``'s config.json, overrides on top),
    before ``transformers`` normalises it."""
    from transformers import PretrainedConfig

    data = dict(_plain(cfg.hf_config)) if cfg.hf_config is not None else {}
    if cfg.hf_config is None and cfg.path:
        kept = _kept_config(cfg.path)  # as build_hf_config: no network for a model whose facts are kept
        source = str(cfg.path) if kept is None else kept
        data = source if isinstance(source, dict) else PretrainedConfig.get_config_dict(source)[0]
    return {**data, **dict(_plain(cfg.config_overrides) or {})}


class LLMAdapter(nn.Module, abc.ABC):
    """Base of the LLM adapters: a frozen ``transformers`` model + its tokenizer.

    Subclasses set ``AUTO_CLASS`` (the ``transformers`` Auto class name),
    ``GPU_DTYPE`` and ``DEFAULT_VQA_PROMPT`` and implement the family-specific methods.

    Args:
        cfg: the ``llm`` block (:class:`LLMConfig` or a subclass).
        model: the ``transformers`` model.
        tokenizer: a tokenizer, or None to read it lazily from ``cfg.tokenizer`` /
            ``cfg.path`` on first use (so sizing a model on ``meta`` reads nothing).
    """

    AUTO_CLASS = "AutoModelForCausalLM"
    GPU_DTYPE = "fp16"
    DEFAULT_VQA_PROMPT = "Question: {} Answer:"

    def __init__(self, cfg: Any, model: nn.Module, tokenizer: Any = None):
        super().__init__()
        self.cfg = cfg
        self.model = model
        self._tokenizer = tokenizer
        self._answer_cache: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        if cfg.freeze:
            from lavislike.models.freezing import freeze

            freeze(self.model)

    # -- building ---------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Any, device: torch.device | str | None = None) -> "LLMAdapter":
        """Build the adapter; weights are read straight to ``device`` in the right dtype.

        Args:
            cfg: the ``llm`` block.
            device: target device; None = ``torch.get_default_device()`` (so building under
                ``with torch.device("meta"):`` sizes the model without reading weights).
        """
        import transformers

        device = torch.device(device) if device is not None else torch.get_default_device()
        dtype = resolve_dtype(cfg.dtype, cls.GPU_DTYPE, device)
        auto = getattr(transformers, cls.AUTO_CLASS)
        reads_weights = cfg.load_weights and device.type != "meta" and cfg.hf_config is None
        hf_config = build_hf_config(cfg, known_fallback=not reads_weights)
        kwargs = {}
        if cfg.attn_implementation:
            kwargs["attn_implementation"] = cfg.attn_implementation
        if reads_weights:
            import importlib.util

            # straight to the GPU needs accelerate's device_map; without it: CPU, then move
            direct = device.type != "cpu" and importlib.util.find_spec("accelerate") is not None
            if direct:
                kwargs["device_map"] = device
            try:
                with real_parameters(), torch.device(device if direct else "cpu"):
                    model = auto.from_pretrained(str(cfg.path), config=hf_config, dtype=dtype, **kwargs)
            except (OSError, RuntimeError, ValueError) as exc:
                raise CheckpointError(f"llm.path='{cfg.path}': cannot load the weights ({_one_line(exc)})") from None
            except Exception as exc:  # SafetensorError, UnpicklingError: damaged or hostile files
                raise CheckpointError(
                    f"llm.path='{cfg.path}': cannot load the weights ({type(exc).__name__}: {_one_line(exc)})"
                ) from None
            if not direct:
                model.to(device)
            # from_pretrained kept the head apart only if the file holds it apart; record
            # that, or the next tie_weights() would re-tie it
            set_tied_(model, is_tied(model))
        else:
            with torch.device(device):
                model = auto.from_config(hf_config, dtype=dtype, **kwargs)
            set_tied_(model, declared_tied(raw_config(cfg)))
        return cls(cfg, model)

    @property
    def tokenizer(self):
        """The LLM's tokenizer (read on first use)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            source = self.cfg.tokenizer or self.cfg.path
            if not source:
                raise ConfigError("llm.tokenizer and llm.path are both unset: nothing to read a tokenizer from")
            key = "llm.tokenizer" if self.cfg.tokenizer else "llm.path"
            require_local(source, f"model.{key}", CheckpointError)
            folder = resolve_package_path(str(source))
            require_tokenizer(folder, key)
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(folder)
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"{key}='{source}': cannot load the tokenizer ({_one_line(exc)})") from None
            self._setup_tokenizer(self._tokenizer)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._setup_tokenizer(value)
        self._tokenizer = value
        self._answer_cache.clear()

    def _setup_tokenizer(self, tok) -> None:
        """Family-specific tokenizer fixes (padding token, ...)."""
        if tok.pad_token is None:
            # Llama-style tokenizers ship no pad token; padding is masked out everywhere
            # (targets come from the attention mask), so any id works.
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token

    # -- the output head ------------------------------------------------------------------
    @property
    def output_tied(self) -> bool:
        """True when the LM head is the input embedding (OPT); false for FlanT5's own head."""
        return is_tied(self.model)

    def follow_state_tying_(self, state: dict, prefix: str = "") -> None:
        """Tie or untie the LM head as the checkpoint ``state`` holds it (keys ``prefix`` +
        the ``transformers`` names); a state without the LLM changes nothing."""
        names = embedding_names(self.model)
        tied = tying_in_state(state, names, prefix) if names is not None else None
        if tied is not None and tied != self.output_tied:
            set_tied_(self.model, tied)

    # -- properties ---------------------------------------------------------------------
    @property
    def weights_from_path(self) -> bool:
        """True when the weights are read from ``path`` (not a random model of a config)."""
        return bool(self.cfg.load_weights and self.cfg.path and self.cfg.hf_config is None)

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    # -- shared helpers -----------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids (in the LLM's dtype)."""
        return self.model.get_input_embeddings()(input_ids)

    def tokenize(
        self,
        texts: Sequence[str],
        side: str = "right",
        max_length: Optional[int] = None,
        add_special_tokens: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` on the LLM's device, padded on ``side``."""
        tok = self.tokenizer
        tok.padding_side = side
        out = tok(
            list(texts),
            return_tensors="pt",
            padding="longest",
            truncation=max_length is not None,
            max_length=max_length,
            add_special_tokens=add_special_tokens,
        )
        return out.input_ids.to(self.device), out.attention_mask.to(self.device)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Token ids -> stripped strings (special tokens and padding dropped)."""
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def prompt_embeds(self, soft_prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The soft prompt in the LLM dtype and its all-ones attention mask."""
        soft = soft_prompt.to(self.device, self.dtype)
        return soft, torch.ones(soft.shape[:2], dtype=torch.long, device=self.device)

    def generation_kwargs(
        self,
        use_nucleus_sampling: bool = False,
        num_beams: int = 5,
        max_length: int = 30,
        min_length: int = 1,
        top_p: float = 0.9,
        repetition_penalty: float = 1.0,
        length_penalty: float = 1.0,
        num_captions: int = 1,
        temperature: float = 1.0,
    ) -> dict:
        """LAVIS-style generation arguments -> ``transformers`` ``generate`` kwargs.

        ``max_length`` / ``min_length`` count generated tokens only.
        """
        kwargs = dict(
            do_sample=use_nucleus_sampling,
            num_beams=1 if use_nucleus_sampling else num_beams,
            max_new_tokens=max_length,
            min_new_tokens=min_length,
            repetition_penalty=repetition_penalty,
            length_penalty=length_penalty,
            num_return_sequences=num_captions,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if use_nucleus_sampling:
            kwargs.update(top_p=top_p, temperature=temperature)
        return kwargs

    def answer_tokens(self, answers: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate answers as the tokens the LLM would emit, end-of-answer included;
        right-padded ``(K, L)`` ids and mask (cached per answer list)."""
        key = tuple(answers)
        if key not in self._answer_cache:
            self._answer_cache.clear()  # one answer list at a time is what evaluation uses
            self._answer_cache[key] = self._tokenize_answers(list(answers))
        ids, mask = self._answer_cache[key]
        return ids.to(self.device), mask.to(self.device)

    def rank_answers(
        self,
        soft_prompt: torch.Tensor,
        prompts: Sequence[str],
        answers: Sequence[str],
        max_txt_len: Optional[int] = None,
        num_candidates: int = 128,
        chunk_size: int = 512,
    ) -> torch.Tensor:
        """Log-likelihood of every candidate answer given image + prompt.

        All candidates are scored when there are at most ``num_candidates`` of them;
        otherwise each question keeps the ``num_candidates`` answers whose first token is
        most likely and the rest score ``-inf`` (BLIP's short-listing).

        Returns:
            (B, K) float32 sum of the answer tokens' log-probabilities.
        """
        ans_ids, ans_mask = self.answer_tokens(answers)
        with torch.no_grad():
            state, first_logp = self._answer_prefix(soft_prompt, prompts, max_txt_len)
            b, k = first_logp.shape[0], ans_ids.shape[0]
            if k > num_candidates:
                cand = first_logp[:, ans_ids[:, 0]].topk(num_candidates, dim=1).indices
            else:
                cand = torch.arange(k, device=self.device).expand(b, k)
            n = cand.shape[1]
            rows = torch.arange(b, device=self.device).repeat_interleave(n)
            flat = cand.reshape(-1)
            parts = []
            for start in range(0, flat.numel(), chunk_size):
                sl = slice(start, start + chunk_size)
                parts.append(
                    self._answer_scores(state, first_logp, rows[sl], ans_ids[flat[sl]], ans_mask[flat[sl]])
                )
            scores = torch.full((b, k), float("-inf"), device=self.device)
            scores.scatter_(1, cand, torch.cat(parts).view(b, n))
        return scores

    # -- family-specific ----------------------------------------------------------------
    @abc.abstractmethod
    def lm_loss(
        self,
        soft_prompt: torch.Tensor,
        prefixes: Sequence[str],
        targets: Sequence[str],
        max_txt_len: Optional[int] = None,
    ) -> torch.Tensor:
        """Mean token cross-entropy of ``targets`` given soft prompt + ``prefixes``."""

    @torch.no_grad()
    def generate_ids(
        self,
        soft_prompt: torch.Tensor,
        prompts: Sequence[str],
        max_txt_len: Optional[int] = None,
        beam_search: str = "lavis",
        **generation,
    ) -> torch.Tensor:
        """Generated token ids (new tokens only) for ``B * num_return_sequences`` rows.

        ``generation`` holds ``generate`` keywords (:meth:`generation_kwargs` makes them);
        ``beam_search`` picks the beam-search rules (:mod:`lavislike.models.llms.beam_search`):
        ``"lavis"`` or ``"transformers"``.
        """
        if uses_lavis_loop(beam_search, generation):
            eos = generation.pop("eos_token_id", None)
            return lavis_beam_search(self, soft_prompt, prompts, max_txt_len,
                                     eos_id=self.eos_token_id if eos is None else eos, **generation)
        return self._transformers_generate(soft_prompt, prompts, max_txt_len, **generation)

    @property
    @abc.abstractmethod
    def eos_token_id(self) -> int:
        """Id of the token that ends a generated text."""

    @abc.abstractmethod
    def _transformers_generate(
        self, soft_prompt: torch.Tensor, prompts: Sequence[str], max_txt_len: Optional[int], **generation
    ) -> torch.Tensor:
        """``model.generate``'s new token ids for ``B * num_return_sequences`` rows."""

    @abc.abstractmethod
    def _beam_state(
        self, soft_prompt: torch.Tensor, prompts: Sequence[str], max_txt_len: Optional[int], num_beams: int
    ) -> BeamState:
        """The prompt run once per image and its cache widened to ``num_beams`` rows each."""

    @abc.abstractmethod
    def _tokenize_answers(self, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``(K, L)`` answer ids + mask, end-of-answer token included."""

    @abc.abstractmethod
    def _answer_prefix(
        self, soft_prompt: torch.Tensor, prompts: Sequence[str], max_txt_len: Optional[int]
    ) -> tuple[Any, torch.Tensor]:
        """Run the part shared by all answers once: ``(state, (B, V) first-token log-probs)``."""

    @abc.abstractmethod
    def _answer_scores(
        self, state: Any, first_logp: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Log-likelihood of answers ``ids`` (N, L) for questions ``rows`` (N,) -> (N,)."""


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over positions of ``log softmax(logits)[ids]`` where ``mask`` is 1 (float32)."""
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)
