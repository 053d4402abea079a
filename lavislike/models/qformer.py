"""The Querying Transformer (Q-Former): a BERT encoder whose learned queries read image features.

One module serves every BLIP-2 variant. Learned query embeddings (``query_tokens``) are put in
front of optional text tokens; queries and text share the self-attention layers, only the
queries pass through cross-attention to the frozen image features (every
``cross_attention_freq`` layers) and queries and text have separate feed-forward blocks.
Who attends to whom is chosen per call:

* ``causal=False`` (bidirectional): everything sees everything (ITM, question-aware queries,
  the query-only image pass and the text-only pass of ITC, which together form the
  *unimodal* regime because each pass holds one modality);
* ``causal=True`` (multimodal causal, ITG): queries see only queries, each text token sees all
  queries and the text before it.

Keys/values of the query pass can be cached (``use_cache=True``) and passed back as
``past_key_values`` to a text-only pass: the ITG reuse of the ITC image pass, and incremental
decoding.

Public API (stable; used by :mod:`lavislike.models.base` and the stage-2 models):

* :class:`QFormerConfig` - the ``qformer:`` YAML block (BERT-base sizes by default).
* :class:`QFormer` ``(cfg, encoder_width)`` with
  ``forward(*, query_embeds=None, input_ids=None, text_mask=None, image_embeds=None,
  image_mask=None, causal=False, past_key_values=None, use_cache=False, output_rows=None)
  -> QFormerOutput``,
  ``query_outputs(image_embeds, input_ids=None, text_mask=None) -> (B, Q, H)``,
  ``text_states(input_ids, text_mask) -> TextStates`` and
  ``query_outputs_from_states(states, text_mask, text_index, ...) -> (K, Q, H)``,
  ``lm_logits(hidden) -> (B, L, V)``, ``load_bert(folder)``, ``tie_weights()``,
  ``init_weights_(module)``, attribute ``query_tokens`` (1, Q, H).

No work whose result nothing reads: with ``output_rows`` (set by ``query_outputs``: ITM and
question-aware queries read the queries only; the ITC text pass reads [CLS]) the last layer
computes its self-attention and FFN for those rows only; and a text scored against many
images (retrieval re-ranking) runs the part of the pass that sees no image - the first
layer's self-attention and its text FFN - once (``text_states``), not once per pair.
* :func:`self_attention_mask` - the boolean SDPA masks of the regimes above.

Parameter names (LAVIS ``Qformer.bert.*`` / HF ``qformer.*`` map onto them by the tables in
:mod:`lavislike.models.convert`): ``embeddings.{word_embeddings,position_embeddings,norm}``,
``layers.N.{self_attn,cross_attn}.{query,key,value,out,norm}``,
``layers.N.{text_ffn,query_ffn}.{fc1,fc2,norm}``, ``lm_head.{transform,norm,decoder}``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lavislike.errors import CheckpointError, ConfigError
from lavislike.models.attention import scaled_dot_product_attention

logger = logging.getLogger(__name__)

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class QFormerConfig:
    """Sizes and switches of the Q-Former (defaults: BERT-base, as in the paper).

    Attributes:
        num_query_token: number of learned queries.
        cross_attention_freq: a cross-attention block in layers 0, f, 2f, ...
        encoder_width: image feature width; None = the image encoder's ``num_features``.
        text_input: build word/position embeddings and the text FFNs (False for stage-2
            models that only read queries).
        lm_head: build the BERT LM head (``cls.predictions``) used by ITG and captioning.
        tie_lm_head: share the LM decoder weight with the word embeddings (LAVIS does).
        init_from: a BERT checkpoint folder, hub id or ``pkg:<module>/<dir>`` (a folder inside
            an installed package) to initialise the text parts from;
            the query FFNs are copied from the text FFNs. None = random init.
        gradient_checkpointing: recompute layer activations in backward.
    """

    num_query_token: int = 32
    cross_attention_freq: int = 2
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    vocab_size: int = 30523  # bert-base-uncased + the added [DEC] token
    pad_token_id: int = 0
    initializer_range: float = 0.02
    encoder_width: Optional[int] = None
    text_input: bool = True
    lm_head: bool = True
    tie_lm_head: bool = True
    init_from: Optional[str] = None
    gradient_checkpointing: bool = False


@dataclass
class TextStates:
    """What a bidirectional ``[queries; text]`` pass computes before it first sees an image,
    once per text: layer 0's self-attention (the queries meet the image only afterwards, in
    its cross-attention) and layer 0's text FFN (text rows never cross-attend).

    Attributes:
        queries: (M, Q, H) layer 0's self-attention output at the query rows.
        text: (M, T, H) layer 0's output at the text rows.
    """

    queries: torch.Tensor
    text: torch.Tensor


@dataclass
class QFormerOutput:
    """``last_hidden_state`` (B, L, H); ``past_key_values`` per layer when ``use_cache``."""

    last_hidden_state: torch.Tensor
    past_key_values: Optional[KVCache] = None


def self_attention_mask(
    num_query: int,
    text_mask: Optional[torch.Tensor],
    causal: bool,
    past_len: int = 0,
    batch_size: int = 1,
    device: torch.device | str | None = None,
) -> Optional[torch.Tensor]:
    """Boolean self-attention mask (True = may attend) for SDPA, or None when all is visible.

    The sequence is ``[queries (num_query), text (T)]``; ``past_len`` cached keys come first
    and are always visible (they are queries, or tokens decoded before).

    Args:
        num_query: number of query positions in the current input.
        text_mask: (B, T) 1 for real text tokens, 0 for padding; None = no text or no padding.
        causal: multimodal causal regime (queries see queries; text sees queries + earlier text).
        past_len: number of cached key positions in front.
        batch_size: used when ``text_mask`` is None.
        device: used when ``text_mask`` is None.

    Returns:
        (B, 1, num_query + T, past_len + num_query + T) bool, or None.
    """
    text_len = 0 if text_mask is None else text_mask.shape[1]
    if not causal and (text_mask is None or bool(text_mask.all())):
        return None
    if text_mask is not None:
        batch_size, device = text_mask.shape[0], text_mask.device
        text_keys = text_mask.bool()
    else:
        text_keys = torch.ones(batch_size, 0, dtype=torch.bool, device=device)
    length = num_query + text_len
    keys = torch.cat(
        [torch.ones(batch_size, past_len + num_query, dtype=torch.bool, device=device), text_keys], 1
    )
    mask = keys[:, None, None, :].expand(batch_size, 1, length, past_len + length)
    if causal:
        pos = torch.arange(length, device=device)
        # key j (current input) is visible from row i when it is a query or a text token
        # no later than i; queries never see text
        allowed = (pos[None, :] < num_query) | (pos[None, :] <= pos[:, None])
        allowed = allowed & ~((pos[:, None] < num_query) & (pos[None, :] >= num_query))
        allowed = torch.cat(
            [torch.ones(length, past_len, dtype=torch.bool, device=device), allowed], 1
        )
        mask = mask & allowed
    return mask.contiguous()


def _cross_mask(image_mask: Optional[torch.Tensor], image_index: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """SDPA mask of the cross-attention (B, 1, 1, P), None when every patch is visible."""
    if image_mask is None or bool(image_mask.all()):
        return None
    cross_mask = image_mask.bool()[:, None, None, :]
    return cross_mask if image_index is None else cross_mask.index_select(0, image_index)


class _PickRows(torch.autograd.Function):
    """``x.index_select(0, index)``, whose backward adds whole contiguous rows. The gradient
    of gathered attention keys arrives with its last two dimensions transposed (from the
    score product's backward), and ``index_select``'s own backward hands it to
    ``index_add_`` as it is, which then scatters element by element (24 pairs x 197 keys x
    384, one core: 4.2 ms); added in the layout where it is contiguous, 0.5 ms, the same
    sums in the same order."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        swap = grad.dim() > 2 and not grad.is_contiguous() and grad.transpose(-1, -2).is_contiguous()
        rows = grad.transpose(-1, -2) if swap else grad.contiguous()
        total = rows.new_zeros((ctx.rows, *rows.shape[1:])).index_add_(0, index, rows)
        return (total.transpose(-1, -2) if swap else total), None


class Attention(nn.Module):
    """Multi-head attention (SDPA) with BERT's post-norm residual output."""

    def __init__(self, cfg: QFormerConfig, kv_width: int):
        super().__init__()
        h = cfg.hidden_size
        if h % cfg.num_attention_heads:
            raise ConfigError(
                f"qformer.hidden_size={h} is not divisible by "
                f"qformer.num_attention_heads={cfg.num_attention_heads}"
            )
        self.num_heads = cfg.num_attention_heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(kv_width, h)
        self.value = nn.Linear(kv_width, h)
        self.out = nn.Linear(h, h)
        self.norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.attn_dropout = cfg.attention_probs_dropout_prob
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, -1).transpose(1, 2)

    def project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(key, value) of ``source`` (B, N, kv_width) in head layout (B, heads, N, d)."""
        return self._heads(self.key(source)), self._heads(self.value(source))

    def forward(
        self,
        hidden: torch.Tensor,
        kv_input: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        past: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        kv: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        kv_index: Optional[torch.Tensor] = None,
        rows: Optional[int] = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Returns the block output and this call's full (key, value) in head layout.

        ``kv`` replaces the key/value projection of ``kv_input`` (computed once by
        :meth:`project_kv` and shared); ``kv_index`` (B,) picks each row's key/value from
        them (or from the projection of ``kv_input``), so that features shared by many rows
        are projected once. ``rows``: only the first ``rows`` positions of ``hidden`` are
        computed (all of them still serve as keys/values of self-attention).
        """
        asking = hidden if rows is None else hidden[:, :rows]
        if rows is not None and mask is not None and mask.shape[-2] > rows:
            mask = mask[..., :rows, :]
        q = self._heads(self.query(asking))
        if kv is None:
            kv = self.project_kv(hidden if kv_input is None else kv_input)
        k, v = kv
        if kv_index is not None and k.shape[0] == 1:  # one image for all rows: a view, no copy
            k, v = k.expand(kv_index.shape[0], -1, -1, -1), v.expand(kv_index.shape[0], -1, -1, -1)
        elif kv_index is not None:
            k, v = _PickRows.apply(k, kv_index), _PickRows.apply(v, kv_index)
        if past is not None:
            k = torch.cat([past[0], k], 2)
            v = torch.cat([past[1], v], 2)
        ctx = scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        ctx = ctx.transpose(1, 2).flatten(2)
        return self.norm(self.dropout(self.out(ctx)) + asking), (k, v)


class FeedForward(nn.Module):
    """BERT intermediate + output block (post-norm)."""

    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.act = _activation(cfg.hidden_act)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.dropout(self.fc2(self.act(self.fc1(x)))) + x)


def _activation(name: str) -> nn.Module:
    acts = {"gelu": nn.GELU(), "gelu_new": nn.GELU(approximate="tanh"), "relu": nn.ReLU()}
    if name not in acts:
        raise ConfigError(f"qformer.hidden_act='{name}' is not supported; use one of {sorted(acts)}")
    return acts[name]


class QFormerLayer(nn.Module):
    def __init__(self, cfg: QFormerConfig, index: int, encoder_width: int):
        super().__init__()
        self.self_attn = Attention(cfg, cfg.hidden_size)
        self.has_cross = index % cfg.cross_attention_freq == 0
        self.cross_attn = Attention(cfg, encoder_width) if self.has_cross else None
        self.text_ffn = FeedForward(cfg) if cfg.text_input else None
        self.query_ffn = FeedForward(cfg)

    def forward(
        self,
        hidden: torch.Tensor,
        mask: Optional[torch.Tensor],
        num_query: int,
        image_embeds: Optional[torch.Tensor],
        image_mask: Optional[torch.Tensor],
        past: Optional[tuple[torch.Tensor, torch.Tensor]],
        image_kv: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        image_index: Optional[torch.Tensor] = None,
        rows: Optional[int] = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``rows``: compute only the first ``rows`` outputs (the others would feed nothing)."""
        hidden, kv = self.self_attn(hidden, mask=mask, past=past, rows=rows)
        if num_query == 0:
            return self._text_ffn(hidden), kv
        queries = self.query_block(hidden[:, :num_query], image_embeds, image_mask, image_kv, image_index)
        if hidden.shape[1] <= num_query:
            return queries, kv
        return torch.cat([queries, self._text_ffn(hidden[:, num_query:])], 1), kv

    def query_block(
        self,
        queries: torch.Tensor,
        image_embeds: Optional[torch.Tensor],
        image_mask: Optional[torch.Tensor],
        image_kv: Optional[tuple[torch.Tensor, torch.Tensor]],
        image_index: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """What the query rows do after self-attention: cross-attention (on layers with one),
        then the query FFN. The first place a Q-Former pass sees the image."""
        if self.has_cross:
            if image_embeds is None and image_kv is None:
                raise ValueError("the Q-Former queries need image_embeds for cross-attention")
            queries, _ = self.cross_attn(queries, image_embeds, mask=image_mask, kv=image_kv, kv_index=image_index)
        return self.query_ffn(queries)

    def cross_kv(self, image_embeds: torch.Tensor) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """This layer's cross-attention (key, value) of ``image_embeds`` (None without one).

        A method of the layer, not reached into from outside: FSDP runs it as a forward of
        the layer's unit (``register_fsdp_forward_method``), so its weights are gathered.
        The same holds for :meth:`text_states` and :meth:`queries_from_states`.
        """
        return self.cross_attn.project_kv(image_embeds) if self.has_cross else None

    def text_states(self, hidden: torch.Tensor, mask: Optional[torch.Tensor], num_query: int) -> "TextStates":
        """As the first layer: the part of its pass over ``[queries; text]`` that sees no image."""
        hidden, _ = self.self_attn(hidden, mask=mask)
        return TextStates(hidden[:, :num_query], self._text_ffn(hidden[:, num_query:]))

    def queries_from_states(self, queries: torch.Tensor, image_embeds: Optional[torch.Tensor],
                            image_mask: Optional[torch.Tensor], image_kv: Optional[tuple[torch.Tensor, torch.Tensor]],
                            image_index: Optional[torch.Tensor]) -> torch.Tensor:
        """The rest of the first layer for the query rows of :meth:`text_states`."""
        return self.query_block(queries, image_embeds, image_mask, image_kv, image_index)

    def _text_ffn(self, x: torch.Tensor) -> torch.Tensor:
        if self.text_ffn is None:
            raise ConfigError("this Q-Former was built with qformer.text_input=false; it reads no text")
        return self.text_ffn(x)


class Embeddings(nn.Module):
    """Word + absolute position embeddings for text; queries get none; shared LayerNorm."""

    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        if cfg.text_input:
            self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
            self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        else:
            self.word_embeddings = self.position_embeddings = None
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(
        self,
        input_ids: Optional[torch.Tensor],
        query_embeds: Optional[torch.Tensor],
        position_offset: int = 0,
        word_embeds: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        parts = [] if query_embeds is None else [query_embeds]
        if input_ids is not None:
            if self.word_embeddings is None:
                raise ConfigError("this Q-Former was built with qformer.text_input=false; it reads no text")
            pos = torch.arange(position_offset, position_offset + input_ids.shape[1], device=input_ids.device)
            words = self.word_embeddings(input_ids) if word_embeds is None else word_embeds
            text = words + self.position_embeddings(pos)[None]
            parts.append(text.to(parts[0].dtype) if parts else text)
        return self.dropout(self.norm(torch.cat(parts, 1) if len(parts) > 1 else parts[0]))


class LMHead(nn.Module):
    """BERT ``cls.predictions``: dense + activation + LayerNorm, then the vocabulary decoder."""

    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.transform = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = _activation(cfg.hidden_act)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.transform(hidden))))


class QFormer(nn.Module):
    """The Q-Former: learned queries + BERT layers with cross-attention to image features.

    Args:
        cfg: sizes and switches (:class:`QFormerConfig`).
        encoder_width: width of the image features the cross-attention reads.

    Example:
        >>> qf = QFormer(QFormerConfig(num_hidden_layers=2, hidden_size=32,
        ...     num_attention_heads=4, intermediate_size=64, num_query_token=4, vocab_size=50), 16)
        >>> qf.query_outputs(torch.randn(2, 5, 16)).shape
        torch.Size([2, 4, 32])
    """

    def __init__(self, cfg: QFormerConfig, encoder_width: int):
        super().__init__()
        self.cfg = cfg
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_query_token, cfg.hidden_size))
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(QFormerLayer(cfg, i, encoder_width) for i in range(cfg.num_hidden_layers))
        self.lm_head = LMHead(cfg) if cfg.lm_head else None
        if cfg.lm_head and not cfg.text_input:
            raise ConfigError("qformer.lm_head=true needs qformer.text_input=true")
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.apply(self.init_weights_)
        nn.init.normal_(self.query_tokens, std=cfg.initializer_range)
        self.tie_weights()

    # -- weights ------------------------------------------------------------------
    def init_weights_(self, module: nn.Module) -> None:
        """BERT init for one module (Linear/Embedding N(0, 0.02), LayerNorm 1/0)."""
        std = self.cfg.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif module is self:
            nn.init.normal_(self.query_tokens, std=self.cfg.initializer_range)

    def tie_weights(self) -> None:
        """Share the LM decoder weight with the word embeddings (call again after loading)."""
        if self.lm_head is not None and self.cfg.tie_lm_head:
            self.lm_head.decoder.weight = self.embeddings.word_embeddings.weight

    def load_bert(self, path: str | Path) -> None:
        """Initialise from a pre-trained BERT checkpoint (HF folder or hub id).

        Embeddings, self-attention and text FFNs come from BERT; each query FFN is a copy of
        its layer's text FFN; cross-attention stays random; the LM head is taken when the
        checkpoint has one (``cls.predictions``). Extra vocabulary rows (``[DEC]``) keep
        their random init. Sizes must match (hidden size, heads, layer count at most BERT's).
        """
        from lavislike.models.image_encoders.weights import read_hf_state
        from lavislike.models.convert.lavis import bert_to_qformer_state

        state = read_hf_state(path)
        mapped = bert_to_qformer_state(state, self.cfg.num_hidden_layers)
        own = self.state_dict()
        with torch.no_grad():
            for name, tensor in mapped.items():
                if name.startswith("lm_head.") and self.lm_head is None:
                    continue
                if name not in own:
                    continue
                target = own[name]
                if name == "embeddings.word_embeddings.weight" or name == "lm_head.decoder.weight":
                    if tensor.shape[0] > target.shape[0] or tensor.shape[1:] != target.shape[1:]:
                        raise CheckpointError(f"{path}: {name} has shape {tuple(tensor.shape)}, "
                                              f"the Q-Former needs {tuple(target.shape)}")
                    target[: tensor.shape[0]].copy_(tensor)
                elif name == "lm_head.decoder.bias":
                    target[: tensor.shape[0]].copy_(tensor)
                elif tensor.shape != target.shape:
                    raise CheckpointError(
                        f"{path}: {name} has shape {tuple(tensor.shape)} but the Q-Former needs "
                        f"{tuple(target.shape)}; set qformer sizes to the BERT checkpoint's"
                    )
                else:
                    target.copy_(tensor)
            for layer in self.layers:
                if layer.text_ffn is not None:
                    layer.query_ffn.load_state_dict(layer.text_ffn.state_dict())
        self.tie_weights()

    # -- forward ------------------------------------------------------------------
    def forward(
        self,
        *,
        query_embeds: Optional[torch.Tensor] = None,
        input_ids: Optional[torch.Tensor] = None,
        text_mask: Optional[torch.Tensor] = None,
        image_embeds: Optional[torch.Tensor] = None,
        image_mask: Optional[torch.Tensor] = None,
        causal: bool = False,
        past_key_values: Optional[KVCache] = None,
        use_cache: bool = False,
        image_kv: Optional[list[Optional[tuple[torch.Tensor, torch.Tensor]]]] = None,
        image_index: Optional[torch.Tensor] = None,
        word_embeds: Optional[torch.Tensor] = None,
        output_rows: Optional[int] = None,
    ) -> QFormerOutput:
        """Run queries and/or text through the Q-Former.

        Args:
            query_embeds: (B, Q, H) queries (usually ``query_tokens.expand(B, -1, -1)``).
            input_ids: (B, T) text token ids.
            text_mask: (B, T) 1 = token, 0 = padding.
            image_embeds: (B, P, C) image features for the queries' cross-attention.
            image_mask: (B, P) 1 = visible patch (None = all).
            causal: multimodal causal mask (ITG / decoding) instead of bidirectional.
            past_key_values: cached self-attention (key, value) per layer (B, heads, N, d);
                they act as a prefix every position can see.
            use_cache: also return this call's (key, value) per layer, past included.
            image_kv: :meth:`cross_kv` of the image features, instead of ``image_embeds``:
                passes that read the same images share one key/value projection.
            image_index: (B,) row of ``image_embeds`` / ``image_kv`` (and ``image_mask``)
                each sample reads; None = one image per sample, in order.
            word_embeds: (B, T, H) ``word_embeddings(input_ids)`` computed by the caller:
                passes over the same tokens share one lookup (each lookup's backward
                allocates a dense vocabulary-sized gradient).
            output_rows: return only the first ``output_rows`` positions (e.g. the queries,
                or the text's [CLS]): the last layer computes its self-attention and FFN
                for those rows only (the others still give keys/values).
        """
        num_query = 0 if query_embeds is None else query_embeds.shape[1]
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        # text positions restart at 0 after a query-only prefix (LAVIS subtracts the query
        # length from the cache length); with decoded text in the cache they continue
        offset = max(past_len - self.cfg.num_query_token, 0) if past_key_values is not None else 0
        hidden = self.embeddings(input_ids, query_embeds, position_offset=offset, word_embeds=word_embeds)
        if causal and input_ids is not None and text_mask is None:
            text_mask = torch.ones_like(input_ids)
        mask = self_attention_mask(num_query, text_mask, causal, past_len, hidden.shape[0], hidden.device)
        if image_embeds is not None:
            image_embeds = image_embeds.to(hidden.dtype)
        return self._run_layers(hidden, mask, num_query, image_embeds, _cross_mask(image_mask, image_index),
                                past_key_values, image_kv, image_index, output_rows, use_cache)

    def _run_layers(self, hidden: torch.Tensor, mask: Optional[torch.Tensor], num_query: int,
                    image_embeds: Optional[torch.Tensor], cross_mask: Optional[torch.Tensor],
                    past_key_values: Optional[KVCache], image_kv: Optional[list],
                    image_index: Optional[torch.Tensor], output_rows: Optional[int],
                    use_cache: bool = False, start: int = 0) -> QFormerOutput:
        """Layers ``start``.. on ``hidden`` (arguments as :meth:`forward` prepares them)."""
        cache: KVCache = []
        for i in range(start, len(self.layers)):
            layer = self.layers[i]
            past = None if past_key_values is None else past_key_values[i]
            layer_kv = None if image_kv is None else image_kv[i]
            rows = output_rows if i == len(self.layers) - 1 else None
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden, kv = checkpoint(
                    layer, hidden, mask, num_query, image_embeds, cross_mask, past, layer_kv, image_index, rows,
                    use_reentrant=False,
                )
            else:
                hidden, kv = layer(hidden, mask, num_query, image_embeds, cross_mask, past, layer_kv, image_index,
                                   rows)
            if use_cache:
                cache.append(kv)
        return QFormerOutput(hidden[:, :output_rows], cache if use_cache else None)

    def text_states(self, input_ids: torch.Tensor, text_mask: Optional[torch.Tensor] = None) -> TextStates:
        """The image-independent start of the bidirectional ``[queries; text]`` pass (ITM),
        once per text: scoring one text against many images (retrieval re-ranking) then
        repeats only what sees the image (:meth:`query_outputs_from_states`)."""
        num_query = self.cfg.num_query_token
        hidden = self.embeddings(input_ids, self.query_tokens.expand(input_ids.shape[0], -1, -1))
        mask = self_attention_mask(num_query, text_mask, False, 0, hidden.shape[0], hidden.device)
        return self.layers[0].text_states(hidden, mask, num_query)

    def query_outputs_from_states(
        self,
        states: TextStates,
        text_mask: Optional[torch.Tensor] = None,
        text_index: Optional[torch.Tensor] = None,
        image_embeds: Optional[torch.Tensor] = None,
        image_mask: Optional[torch.Tensor] = None,
        image_kv: Optional[list] = None,
        image_index: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """:meth:`query_outputs` of (image, text) pairs from the texts' :meth:`text_states`.

        Args:
            states: of the texts; ``text_index`` (K,) picks each pair's (None = one per pair).
            text_mask: (K, T') the pairs' text masks; T' <= T cuts trailing padding columns.
            image_embeds / image_mask / image_kv / image_index: as in :meth:`forward`.
        """
        queries, text = states.queries, states.text
        if text_index is not None:
            queries, text = queries.index_select(0, text_index), text.index_select(0, text_index)
        if text_mask is not None:
            text = text[:, : text_mask.shape[1]]
        num_query = queries.shape[1]
        if image_embeds is not None:
            image_embeds = image_embeds.to(queries.dtype)
        cross_mask = _cross_mask(image_mask, image_index)
        layer_kv = None if image_kv is None else image_kv[0]
        queries = self.layers[0].queries_from_states(queries, image_embeds, cross_mask, layer_kv, image_index)
        hidden = torch.cat([queries, text], 1)
        mask = self_attention_mask(num_query, text_mask, False, 0, hidden.shape[0], hidden.device)
        return self._run_layers(hidden, mask, num_query, image_embeds, cross_mask, None, image_kv, image_index,
                                num_query, start=1).last_hidden_state

    def cross_kv(self, image_embeds: torch.Tensor) -> list[Optional[tuple[torch.Tensor, torch.Tensor]]]:
        """Cross-attention (key, value) of ``image_embeds`` (B, P, C) per layer (None where a
        layer has no cross-attention), to pass as ``image_kv`` to several passes.

        At ViT-g width these projections are about a third of the Q-Former's work per
        image; passes over the same images (ITC, ITM, retrieval re-ranking) share them.
        """
        image_embeds = image_embeds.to(self.query_tokens.dtype)
        return [layer.cross_kv(image_embeds) for layer in self.layers]

    def query_outputs(
        self,
        image_embeds: Optional[torch.Tensor],
        input_ids: Optional[torch.Tensor] = None,
        text_mask: Optional[torch.Tensor] = None,
        image_mask: Optional[torch.Tensor] = None,
        image_kv: Optional[list] = None,
        image_index: Optional[torch.Tensor] = None,
        word_embeds: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Query outputs (B, Q, H); with ``input_ids`` the text (e.g. a question) joins the
        queries in bidirectional self-attention and makes them text-aware.

        ``image_kv`` / ``image_index`` / ``word_embeds``: see :meth:`forward` (with
        ``image_kv``, ``image_embeds`` may be None).
        """
        if image_index is not None:
            batch = image_index.shape[0]
        elif image_embeds is not None:
            batch = image_embeds.shape[0]
        else:
            batch = next(kv for kv in image_kv if kv is not None)[0].shape[0]
        queries = self.query_tokens.expand(batch, -1, -1)
        out = self(
            query_embeds=queries, input_ids=input_ids, text_mask=text_mask,
            image_embeds=image_embeds, image_mask=image_mask, image_kv=image_kv, image_index=image_index,
            word_embeds=word_embeds, output_rows=queries.shape[1],
        )
        return out.last_hidden_state

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits from text hidden states."""
        if self.lm_head is None:
            raise ConfigError("this Q-Former has no LM head (qformer.lm_head=false)")
        return self.lm_head(hidden)
