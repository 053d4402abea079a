"""LAVIS's BLIP-2 stage-1 training forward (``Blip2Qformer.forward``: ITC + ITM with hard
negatives + ITG) re-implemented on transformers' ``Blip2ForImageTextRetrieval`` modules: the
reference of the full stage-1 step in ``bench/stage1_step.py`` (it needs only torch and
transformers).

What LAVIS computes, pass by pass (``lavis/models/blip2_models/blip2_qformer.py``, one
process of a distributed run: the gathered features carry no gradient):

* the frozen vision tower and ``ln_vision`` (trained) once;
* the image pass of the queries (cross-attention to the image), whose self-attention keys
  and values are kept (``use_cache=True``) for ITG;
* the text pass of the captions, tokenised with ``padding="max_length"``, ``max_length=32``;
* ITC over the similarity (max over queries) / temp, label smoothing 0.1;
* one hard negative image per text, then one negative text per image, each
  ``torch.multinomial(row, 1)`` over softmax(sim) with the diagonal at -10000, row by row;
* ITM: one Q-Former pass over the 3B pairs ``texts [pos, pos, neg]`` x ``images [pos, neg,
  pos]`` (every pair projects its image's cross-attention keys/values), the ITM head on the
  query rows, mean over queries, cross-entropy against ``[1] * B + [0] * 2B``;
* ITG: ``[DEC]`` replaces ``[CLS]``; the text rows alone pass through the layers, attending
  to the cached query keys/values and causally to the text, the BERT LM head on every text
  position, the shifted cross-entropy with label smoothing 0.1 (padding ignored).

transformers' Q-Former has no cache and no LM head, so ITG is written out here on the
layers' own modules (their projections, output and feed-forward blocks) with LAVIS's eager
attention, and the LM head is transformers' ``BertLMPredictionHead`` tied to the word
embeddings, as LAVIS's ``cls.predictions`` is.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_TXT_LEN = 32  # LAVIS blip2 ``max_txt_len``
NEG = -10000.0  # LAVIS's additive mask value


def lm_head_like(hf, ours):
    """transformers' BERT LM head on ``hf``'s Q-Former width holding a copy of ``ours`` (a
    lavislike ``LMHead``: ``transform``, ``norm``, ``decoder``), its decoder tied to ``hf``'s
    word embeddings as LAVIS's ``cls.predictions`` is."""
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLMPredictionHead

    cfg = hf.config.qformer_config
    head = BertLMPredictionHead(BertConfig(hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size,
                                           hidden_act=cfg.hidden_act, layer_norm_eps=ours.norm.eps))
    head.decoder.weight = hf.embeddings.word_embeddings.weight
    state = {"transform.dense.weight": ours.transform.weight, "transform.dense.bias": ours.transform.bias,
             "transform.LayerNorm.weight": ours.norm.weight, "transform.LayerNorm.bias": ours.norm.bias,
             "decoder.bias": ours.decoder.bias}
    missing = head.load_state_dict({k: v.detach() for k, v in state.items()}, strict=False).missing_keys
    assert sorted(missing) == ["bias", "decoder.weight"], missing  # ``bias``: transformers' tie of decoder.bias
    return head


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.view(*x.shape[:2], n, -1).transpose(1, 2)


def _itg_layers(hf, hidden: torch.Tensor, past: list, mask: torch.Tensor) -> torch.Tensor:
    """The text rows through every layer, attending to ``past`` (the image pass's query
    keys/values per layer) and to the text under ``mask`` (additive, (B, 1, T, Q + T))."""
    for layer, (k_q, v_q) in zip(hf.qformer.encoder.layer, past):
        attn = layer.attention.attention
        n = attn.num_attention_heads
        q = _heads(attn.query(hidden), n)
        k = torch.cat([k_q, _heads(attn.key(hidden), n)], 2)
        v = torch.cat([v_q, _heads(attn.value(hidden), n)], 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(attn.attention_head_size) + mask
        probs = F.dropout(scores.softmax(-1), attn.attention_dropout, attn.training)
        ctx = (probs @ v).transpose(1, 2).flatten(2)
        hidden = layer.feed_forward_chunk(layer.attention.output(ctx, hidden))
    return hidden


def stage1_losses(hf, head, tokenizer, pixels: torch.Tensor, texts: list[str], temp: float) -> dict:
    """LAVIS's ``Blip2Qformer.forward`` losses (one process, no ``image_id``)."""
    # LAVIS: ``ln_vision(visual_encoder(image))``, no ``no_grad``: the frozen tower records
    # nothing, ``ln_vision`` (transformers' ``post_layernorm``) trains
    image_embeds = hf.vision_model(pixel_values=pixels).last_hidden_state
    bs = image_embeds.shape[0]
    dev = image_embeds.device
    image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=dev)
    query_tokens = hf.query_tokens.expand(bs, -1, -1)
    nq = query_tokens.shape[1]

    # the image pass; its self-attention keys/values are LAVIS's past_key_values
    past, hooks = [], []
    for layer in hf.qformer.encoder.layer:
        attn = layer.attention.attention
        slot: list = []
        past.append(slot)
        for proj in (attn.key, attn.value):
            hooks.append(proj.register_forward_hook(
                lambda _m, _i, out, slot=slot, n=attn.num_attention_heads: slot.append(_heads(out, n))))
    try:
        query_output = hf.qformer(query_embeds=query_tokens, encoder_hidden_states=image_embeds,
                                  encoder_attention_mask=image_atts).last_hidden_state
    finally:
        for h in hooks:
            h.remove()
    image_feats = F.normalize(hf.vision_projection(query_output), dim=-1)

    tok = tokenizer(texts, padding="max_length", truncation=True, max_length=MAX_TXT_LEN, return_tensors="pt")
    ids, atts = tok.input_ids.to(dev), tok.attention_mask.to(dev)
    text_output = hf.qformer(query_embeds=hf.embeddings(input_ids=ids), query_length=0,
                             attention_mask=atts).last_hidden_state
    text_feat = F.normalize(hf.text_projection(text_output[:, 0]), dim=-1)

    # ITC against the gathered batch: ``concat_all_gather`` runs under no_grad, so in
    # LAVIS's (always distributed) training the gathered copies are constants
    image_feats_all, text_feat_all = image_feats.detach(), text_feat.detach()
    sim_i2t = (image_feats.unsqueeze(1) @ text_feat_all.unsqueeze(-1)).squeeze(-1).max(-1).values / temp
    sim_t2i = (text_feat.unsqueeze(1).unsqueeze(1) @ image_feats_all.permute(0, 2, 1)).squeeze(-2).max(-1).values / temp
    targets = torch.arange(bs, device=dev)
    loss_itc = (F.cross_entropy(sim_i2t, targets, label_smoothing=0.1)
                + F.cross_entropy(sim_t2i, targets, label_smoothing=0.1)) / 2

    # ITM with hard negatives
    with torch.no_grad():
        sim_t2i = sim_t2i.clone()
        sim_i2t = sim_i2t.clone()
        sim_t2i.fill_diagonal_(NEG)
        sim_i2t.fill_diagonal_(NEG)
        weights_t2i = F.softmax(sim_t2i, dim=1)
        weights_i2t = F.softmax(sim_i2t, dim=1)
    image_embeds_neg = torch.stack([image_embeds[torch.multinomial(weights_t2i[b], 1).item()] for b in range(bs)])
    neg_text = [torch.multinomial(weights_i2t[b], 1).item() for b in range(bs)]
    text_ids_all = torch.cat([ids, ids, ids[neg_text]])
    text_atts_all = torch.cat([atts, atts, atts[neg_text]])
    queries_itm = hf.query_tokens.expand(text_ids_all.shape[0], -1, -1)
    att_all = torch.cat([torch.ones(queries_itm.shape[:-1], dtype=torch.long, device=dev), text_atts_all], 1)
    image_embeds_all = torch.cat([image_embeds, image_embeds_neg, image_embeds])
    output_itm = hf.qformer(query_embeds=hf.embeddings(input_ids=text_ids_all, query_embeds=queries_itm),
                            query_length=nq, attention_mask=att_all, encoder_hidden_states=image_embeds_all,
                            encoder_attention_mask=torch.ones(image_embeds_all.shape[:-1], dtype=torch.long, device=dev))
    logits = hf.itm_head(output_itm.last_hidden_state[:, :nq]).mean(dim=1)
    itm_labels = torch.cat([torch.ones(bs, dtype=torch.long), torch.zeros(2 * bs, dtype=torch.long)]).to(dev)
    loss_itm = F.cross_entropy(logits, itm_labels)

    # ITG
    dec = ids.clone()
    dec[:, 0] = tokenizer.bos_token_id
    labels = dec.masked_fill(dec == tokenizer.pad_token_id, -100)
    t = dec.shape[1]
    causal = torch.ones(t, t, device=dev).tril().bool()
    keep = torch.cat([torch.ones(bs, t, nq, dtype=torch.bool, device=dev), causal & atts[:, None, :].bool()], 2)
    mask = torch.zeros(keep.shape, device=dev).masked_fill(~keep, NEG)[:, None]
    hidden = hf.qformer.dropout(hf.qformer.layernorm(hf.embeddings(input_ids=dec)))
    hidden = _itg_layers(hf, hidden, past, mask)
    scores = head(hidden)
    loss_lm = F.cross_entropy(scores[:, :-1].reshape(-1, scores.shape[-1]), labels[:, 1:].reshape(-1),
                              label_smoothing=0.1)
    return {"loss": loss_itc + loss_itm + loss_lm, "loss_itc": loss_itc, "loss_itm": loss_itm, "loss_lm": loss_lm}
