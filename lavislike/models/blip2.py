"""Stage-1 BLIP-2 models: the Q-Former trained on a frozen image encoder (no LLM).

Registered names (as in LAVIS, so users' code keeps working):

* ``blip2`` and ``blip2_feature_extractor`` - :class:`Blip2Qformer`: ``forward`` returns the
  ITC + ITM + ITG losses; ``extract_features``; Q-Former captioning ``generate``; the
  retrieval methods used by the retrieval task.
* ``blip2_image_text_matching`` - :class:`Blip2ImageTextMatching`:
  ``forward(samples, match_head="itm"|"itc")``.

Model types: ``pretrain`` (EVA-CLIP ViT-g), ``pretrain_vitL`` (CLIP ViT-L), ``coco``
(retrieval fine-tuned), ``tiny`` (random CPU-size model for tests and demos).

Example:
    >>> from lavislike.models import load_model
    >>> model = load_model("blip2_feature_extractor", "tiny", load_pretrained=False)
    >>> feats = model.extract_features({"image": torch.randn(1, 3, 32, 32)}, mode="image")
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from lavislike.common.dist import all_gather_nograd, all_gather_with_grad, gather_sizes, get_world_size
from lavislike.errors import ConfigError, DataError
from lavislike.models import losses
from lavislike.models.base import Blip2Base, Blip2BaseConfig
from lavislike.models.convert.hf import HF_DROP, HF_RETRIEVAL, HF_RETRIEVAL_ALLOW_MISSING
from lavislike.models.convert.lavis import LAVIS_ALLOW_MISSING, LAVIS_DROP, LAVIS_STAGE1
from lavislike.models.generation import GenerationOutput
from lavislike.models.qformer import TextStates
from lavislike.models.decoding import check_num_captions, decode, reorder_pairs
from lavislike.registry import MODELS

STAGE1_TYPES = {
    "pretrain": "blip2/pretrain.yaml",
    "pretrain_vitL": "blip2/pretrain_vitL.yaml",
    "coco": "blip2/coco.yaml",
    "tiny": "blip2/tiny.yaml",
}


@dataclass
class Blip2Config(Blip2BaseConfig):
    """Stage-1 keys on top of :class:`~lavislike.models.base.Blip2BaseConfig`.

    Attributes:
        embed_dim: width of the ITC features (``vision_proj`` / ``text_proj`` output).
        temp: initial ITC temperature (learned; unclamped, as LAVIS's BLIP-2).
        itc_clamp_temp: clamp the temperature to [0.001, 0.5] before every step (BLIP's
            rule; LAVIS's BLIP-2 does not).
        itc_gather_grad: ITC similarities back-propagate into both their image and their
            text side (the full gradient). False (LAVIS): the batch's features enter as
            constants (gathered without gradient), so image-to-text similarities train the
            image side only and text-to-image the text side only.
        label_smoothing: of the ITC and ITG cross-entropies.
    """

    embed_dim: int = 256
    temp: float = 0.07
    itc_clamp_temp: bool = False
    itc_gather_grad: bool = False
    label_smoothing: float = 0.1


@dataclass
class Blip2Features:
    """What :meth:`Blip2Qformer.extract_features` returns (LAVIS ``BlipOutputFeatures``)."""

    image_embeds: Optional[torch.Tensor] = None  # (B, Q, H) query outputs
    image_embeds_proj: Optional[torch.Tensor] = None  # (B, Q, D) normalised
    text_embeds: Optional[torch.Tensor] = None  # (B, T, H)
    text_embeds_proj: Optional[torch.Tensor] = None  # (B, T, D) normalised ([:, 0] = ITC feature)
    multimodal_embeds: Optional[torch.Tensor] = None  # (B, Q, H)


@MODELS.register("blip2", config=Blip2Config)
@MODELS.register("blip2_feature_extractor", config=Blip2Config)
class Blip2Qformer(Blip2Base):
    """Image encoder + Q-Former with the ITC, ITM and ITG heads (stage-1 pre-training)."""

    MODEL_TYPES = STAGE1_TYPES
    DEFAULT_MODEL_TYPE = "pretrain"
    LAVIS_KEYMAP = LAVIS_STAGE1
    LAVIS_DROP = LAVIS_DROP
    HF_KEYMAP = HF_RETRIEVAL
    HF_DROP = HF_DROP
    ALLOW_MISSING = {"lavis": LAVIS_ALLOW_MISSING, "hf": HF_RETRIEVAL_ALLOW_MISSING}

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        hidden = self.qformer.cfg.hidden_size
        self.vision_proj = nn.Linear(hidden, cfg.embed_dim)
        self.text_proj = nn.Linear(hidden, cfg.embed_dim)
        self.itm_head = nn.Linear(hidden, 2)
        self.temp = nn.Parameter(torch.full((), float(cfg.temp)))

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "Blip2Qformer":
        return cls(cfg)

    def init_missing_(self, names: set[str]) -> None:
        super().init_missing_(names)
        if "temp" in names:
            with torch.no_grad():
                self.temp.fill_(float(self.cfg.temp))

    # -- features -------------------------------------------------------------------
    def _image_pass(self, image_embeds: torch.Tensor, use_cache: bool = False, image_kv: Optional[list] = None):
        queries = self.qformer.query_tokens.expand(image_embeds.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, image_embeds=image_embeds, use_cache=use_cache, image_kv=image_kv)
        return out, F.normalize(self.vision_proj(out.last_hidden_state), dim=-1)

    def _text_feat(self, input_ids: torch.Tensor, text_mask: torch.Tensor, word_embeds: Optional[torch.Tensor] = None):
        """Normalised ITC text feature (B, D): the [CLS] output, so the last layer computes that row only."""
        out = self.qformer(input_ids=input_ids, text_mask=text_mask, word_embeds=word_embeds, output_rows=1)
        return F.normalize(self.text_proj(out.last_hidden_state[:, 0]), dim=-1)

    def itm_logits(
        self,
        image_embeds: Optional[torch.Tensor],
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        image_kv: Optional[list] = None,
        image_index: Optional[torch.Tensor] = None,
        word_embeds: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """ITM logits (K, 2): queries + text bidirectional, head on each query, mean.

        ``image_kv`` (:meth:`QFormer.cross_kv`) and ``image_index`` (K,) let the K pairs read
        fewer distinct images whose cross-attention keys/values are projected once;
        ``word_embeds`` (K, L, H) reuses a word-embedding lookup of ``input_ids``.
        """
        hidden = self.qformer.query_outputs(image_embeds, input_ids, text_mask, image_kv=image_kv,
                                            image_index=image_index, word_embeds=word_embeds)
        return self.itm_head(hidden).mean(1)

    # -- training -------------------------------------------------------------------
    def forward(self, samples: dict) -> dict:
        """ITC + ITM + ITG on a batch with ``image`` (or cached ``image_features``) and
        ``text_input`` (optional ``image_id``).

        Returns:
            ``{"loss", "loss_itc", "loss_itm", "loss_lm"}``.
        """
        texts = _require(samples, "text_input")
        if self.cfg.get("itc_clamp_temp", False):
            with torch.no_grad():
                self.temp.clamp_(0.001, 0.5)
        image_embeds = self.image_embeds(samples)
        bs = image_embeds.shape[0]
        sizes = gather_sizes(bs, image_embeds.device)  # ranks' batches differ after dropped samples
        # the cross-attention keys/values of the images are projected once, for ITC and ITM
        image_kv = self.qformer.cross_kv(image_embeds)
        query_out, image_feats = self._image_pass(image_embeds, use_cache=True, image_kv=image_kv)
        input_ids, text_mask = self.tokenize(texts)
        # one word-embedding lookup serves the ITC, ITM and ITG passes: every lookup's
        # backward would allocate its own dense vocabulary-sized gradient
        bos = torch.full_like(input_ids[:, :1], self.tokenizer.bos_token_id)
        words = self.qformer.embeddings.word_embeddings(torch.cat([input_ids, bos], 1))
        words, bos_word = words[:, :-1], words[:, -1:]
        text_feat = self._text_feat(input_ids, text_mask, words)
        image_ids = samples.get("image_id")
        if image_ids is not None:
            image_ids = torch.as_tensor(image_ids, device=self.device)
        ls = float(self.cfg.label_smoothing)

        loss_itc, sim_i2t, sim_t2i = losses.itc_loss(
            image_feats, text_feat, self.temp, image_ids, ls,
            gather_grad=bool(self.cfg.get("itc_gather_grad", False)), sizes=sizes,
        )

        # ITM: texts [pos, pos, neg] against images [pos, neg, pos]
        neg_text, neg_image = losses.hard_negative_indices(sim_i2t, sim_t2i, image_ids, sizes)
        ids_world, mask_world = all_gather_nograd(input_ids, sizes), all_gather_nograd(text_mask, sizes)
        local = torch.arange(bs, device=image_embeds.device)
        if get_world_size() == 1:
            itm_kv, neg_rows = image_kv, neg_image
            neg_words = words[neg_text]
        else:  # negatives from other ranks: project those B images, reuse the local ones
            neg_kv = self.qformer.cross_kv(all_gather_with_grad(image_embeds, sizes)[neg_image])
            itm_kv = [None if a is None else (torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
                      for a, b in zip(image_kv, neg_kv)]
            neg_rows = local + bs
            neg_words = self.qformer.embeddings.word_embeddings(ids_world[neg_text])
        logits = self.itm_logits(
            None,
            torch.cat([input_ids, input_ids, ids_world[neg_text]]),
            torch.cat([text_mask, text_mask, mask_world[neg_text]]),
            image_kv=itm_kv,
            image_index=torch.cat([local, neg_rows, local]),
            word_embeds=torch.cat([words, words, neg_words]),
        )
        loss_itm = losses.itm_loss(logits, bs, sizes)

        # ITG: [DEC] replaces [CLS]; the image pass's query keys/values are reused
        dec_ids = input_ids.clone()
        dec_ids[:, 0] = self.tokenizer.bos_token_id
        labels = dec_ids.masked_fill(dec_ids == self.tokenizer.pad_token_id, -100)
        lm_out = self.qformer(
            input_ids=dec_ids, text_mask=text_mask, causal=True, past_key_values=query_out.past_key_values,
            word_embeds=torch.cat([bos_word, words[:, 1:]], 1),
        )
        loss_lm = losses.lm_loss(lm_out.last_hidden_state, labels, self.qformer.lm_logits, ls)
        return {
            "loss": loss_itc + loss_itm + loss_lm,
            "loss_itc": loss_itc,
            "loss_itm": loss_itm,
            "loss_lm": loss_lm,
        }

    # -- inference ------------------------------------------------------------------
    @torch.no_grad()
    def extract_features(self, samples: dict, mode: str = "multimodal") -> Blip2Features:
        """Features of images, texts or image-text pairs (as LAVIS ``extract_features``).

        Args:
            samples: ``image`` (B, 3, H, W) and/or ``text_input`` (list[str]).
            mode: ``"image"``, ``"text"`` or ``"multimodal"``.
        """
        modes = ("image", "text", "multimodal")
        if mode not in modes:
            raise ConfigError(f"extract_features: mode '{mode}' is not one of {', '.join(modes)}")
        out = Blip2Features()
        if mode in ("image", "multimodal"):
            image_embeds = self.image_embeds(samples)
        if mode in ("text", "multimodal"):
            input_ids, text_mask = self.tokenize(_require(samples, "text_input"))
        if mode == "image":
            query_out, out.image_embeds_proj = self._image_pass(image_embeds)
            out.image_embeds = query_out.last_hidden_state
        elif mode == "text":
            text = self.qformer(input_ids=input_ids, text_mask=text_mask).last_hidden_state
            out.text_embeds = text
            out.text_embeds_proj = F.normalize(self.text_proj(text), dim=-1)
        else:
            out.multimodal_embeds = self.qformer.query_outputs(image_embeds, input_ids, text_mask)
        return out

    @torch.no_grad()
    def generate(
        self,
        samples: dict,
        use_nucleus_sampling: bool = False,
        num_beams: int = 3,
        max_length: int = 29,
        min_length: int = 9,
        top_p: float = 0.9,
        repetition_penalty: float = 1.0,
        num_captions: int = 1,
        return_ids: bool = False,
        length_penalty: float = 1.0,
        beam_search: str = "lavis",
    ) -> list[str] | GenerationOutput:
        """Q-Former captioning (ITG head): beam search, greedy (``num_beams=1``) or nucleus.

        Args:
            samples: ``image`` (B, 3, H, W).
            use_nucleus_sampling: sample with ``top_p`` instead of beam search.
            num_beams: beam width (1 = greedy).
            max_length / min_length: generated tokens (``[SEP]`` included, ``[DEC]`` not),
                as the LLM models count; the defaults are LAVIS's 30 / 10, which count ``[DEC]``.
            top_p: nucleus mass when sampling.
            repetition_penalty: > 1 discourages repeated tokens (HF semantics).
            num_captions: captions per image (sampling; with beams, the best ``num_captions``).
            return_ids: return a :class:`~lavislike.models.generation.GenerationOutput`
                (captions and token ids) instead of the captions.
            length_penalty: beam hypotheses score ``sum(log p) / length ** length_penalty``
                (1.0 as LAVIS; < 0 favours short captions, 0 ranks by total log-probability).
            beam_search: ``"lavis"`` only: the rules of transformers 4.33, which LAVIS runs
                (transformers has no Q-Former captioner to follow instead).

        Returns:
            ``B x num_captions`` captions, image-major.
        """
        if beam_search != "lavis":
            raise ConfigError(f"beam_search='{beam_search}': the Q-Former captioner has LAVIS's beam search only; "
                              "use beam_search='lavis' (transformers' rules need an LLM model, e.g. blip2_opt)")
        if not use_nucleus_sampling:
            check_num_captions(num_captions, num_beams)
        image_embeds = self.image_embeds(samples)
        width = num_captions if use_nucleus_sampling else num_beams
        tok = self.tokenizer
        b = image_embeds.shape[0]
        bos = torch.full((b, 1), tok.bos_token_id, dtype=torch.long, device=self.device)
        # queries and [DEC] once per image; only the cache is widened to the beams / samples
        first = self.qformer(
            query_embeds=self.qformer.query_tokens.expand(b, -1, -1), input_ids=bos,
            image_embeds=image_embeds, causal=True, use_cache=True,
        )
        rows = torch.arange(b, device=self.device).repeat_interleave(width)

        def step(tokens: torch.Tensor, cache):
            out = self.qformer(input_ids=tokens, past_key_values=cache, use_cache=True)
            return self.qformer.lm_logits(out.last_hidden_state[:, -1]), out.past_key_values

        seqs = decode(
            step, self.qformer.lm_logits(first.last_hidden_state[:, -1])[rows], reorder_pairs(first.past_key_values, rows),
            bos[rows],
            num_beams=1 if use_nucleus_sampling else num_beams, sample=use_nucleus_sampling,
            eos_id=tok.sep_token_id, pad_id=tok.pad_token_id, max_length=max_length + 1,
            min_length=min_length + 1, top_p=top_p, repetition_penalty=repetition_penalty,
            length_penalty=length_penalty, num_return=num_captions,
        )
        texts = [t.strip() for t in tok.batch_decode(seqs, skip_special_tokens=True)]
        return GenerationOutput(texts, seqs[:, 1:]) if return_ids else texts

    # -- retrieval (used by the retrieval task) ---------------------------------------
    @torch.no_grad()
    def retrieval_image_embeds(self, images: torch.Tensor) -> dict:
        """``{"feat": (N, Q, D) normalised ITC features, "embeds": (N, P, C) for ITM}``."""
        embeds = self.encode_image(images)
        _, feat = self._image_pass(embeds)
        return {"feat": feat, "embeds": embeds}

    @torch.no_grad()
    def retrieval_text_embeds(self, texts: Sequence[str]) -> dict:
        """``{"feat": (M, D), "input_ids": (M, T), "attention_mask": (M, T)}``."""
        input_ids, text_mask = self.tokenize(list(texts))
        feat = self._text_feat(input_ids, text_mask)
        return {"feat": feat, "input_ids": input_ids, "attention_mask": text_mask}

    @torch.no_grad()
    def itm_text_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextStates:
        """The image-independent part of the ITM pass of each text (:meth:`QFormer.text_states`),
        for :meth:`itm_scores` to score the texts against many images."""
        return self.qformer.text_states(input_ids.to(self.device), attention_mask.to(self.device))

    @torch.no_grad()
    def itm_scores(
        self,
        image_embeds: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: Optional[torch.Tensor] = None,
        text_states: Optional[TextStates] = None,
        text_index: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Positive-class ITM logit per (image, text) pair: (K,).

        Args:
            image_embeds: (K, P, C) one image per pair, or (U, P, C) distinct images when
                ``image_index`` is given.
            input_ids / attention_mask: (K, L) the texts.
            image_index: (K,) row of ``image_embeds`` for each pair; each distinct image's
                cross-attention keys/values are then computed once (re-ranking scores one
                image against many texts).
            text_states: :meth:`itm_text_states` of texts, ``text_index`` (K,) the row of each
                pair's text in them: the work that sees no image is then not repeated per pair
                (``input_ids`` are not read again; ``attention_mask`` still is).
        """
        image_embeds = image_embeds.to(self.device)
        ids, mask = input_ids.to(self.device), attention_mask.to(self.device)
        if image_index is None and text_states is None:
            return self.itm_logits(image_embeds, ids, mask)[:, 1]
        image_kv = self.qformer.cross_kv(image_embeds)
        if image_index is not None:
            image_index = image_index.to(self.device)
        if text_states is None:
            return self.itm_logits(None, ids, mask, image_kv=image_kv, image_index=image_index)[:, 1]
        hidden = self.qformer.query_outputs_from_states(
            text_states, mask, None if text_index is None else text_index.to(self.device),
            image_kv=image_kv, image_index=image_index,
        )
        return self.itm_head(hidden).mean(1)[:, 1]

    @staticmethod
    def itc_similarity(image_feat: torch.Tensor, text_feat: torch.Tensor) -> torch.Tensor:
        """(N, M) max-over-queries similarity of normalised features."""
        return losses.itc_similarity(image_feat, text_feat)

    # -- export ---------------------------------------------------------------------
    def save_hf(self, folder) -> None:
        """Write a ``Blip2ForImageTextRetrieval`` folder (see :mod:`lavislike.models.convert.hf`)."""
        from lavislike.models.convert.hf import save_hf

        save_hf(self, folder)


@MODELS.register("blip2_image_text_matching", config=Blip2Config)
class Blip2ImageTextMatching(Blip2Qformer):
    """Scores image-text pairs with the ITM head or the ITC similarity."""

    MODEL_TYPES = STAGE1_TYPES
    DEFAULT_MODEL_TYPE = "pretrain"

    def forward(self, samples: dict, match_head: str = "itm") -> torch.Tensor:
        """``itm``: logits (B, 2) (index 1 = match); ``itc``: similarity (B, 1) per pair."""
        image_embeds = self.image_embeds(samples)
        texts = _require(samples, "text_input")
        input_ids, text_mask = self.tokenize(texts)
        if match_head == "itm":
            return self.itm_logits(image_embeds, input_ids, text_mask)
        if match_head == "itc":
            _, image_feats = self._image_pass(image_embeds)
            text_feat = self._text_feat(input_ids, text_mask)
            return torch.einsum("bqd,bd->bq", image_feats, text_feat).amax(1, keepdim=True)
        raise ConfigError(f"match_head '{match_head}' is not one of itm, itc")


def _require(samples: dict, key: str):
    if key not in samples:
        raise DataError(f"the batch has no '{key}' (keys: {', '.join(sorted(samples))})")
    value = samples[key]
    return [value] if key == "text_input" and isinstance(value, str) else value
