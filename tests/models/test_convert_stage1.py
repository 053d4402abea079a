"""Loading LAVIS .pth files, our own format, and the public API around them."""
from __future__ import annotations

import pytest
import torch

from tiny_models import assert_itm_like_hf, build_tiny_hf_blip2_retrieval, tiny_stage1_overrides
from lavislike.errors import CheckpointError
from lavislike.models import load_model, load_model_and_preprocess, model_zoo

TEXTS = ["a cat sitting on a red mat", "two dogs running in the park"]


def hf_to_lavis_names(hf_state: dict) -> dict:
    """Rename a Blip2ForImageTextRetrieval state dict to LAVIS Blip2Qformer keys (by hand)."""
    out = {}
    for k, v in hf_state.items():
        if k.startswith("vision_model.encoder.layers.") and k.endswith("self_attn.qkv.bias"):
            n = k.split(".")[3]
            q, _, val = v.chunk(3)
            out[f"visual_encoder.blocks.{n}.attn.q_bias"] = q
            out[f"visual_encoder.blocks.{n}.attn.v_bias"] = val
            continue
        name = k
        for a, b in [
            ("vision_model.post_layernorm.", "ln_vision."),
            ("vision_model.embeddings.class_embedding", "visual_encoder.cls_token"),
            ("vision_model.embeddings.position_embedding", "visual_encoder.pos_embed"),
            ("vision_model.embeddings.patch_embedding.", "visual_encoder.patch_embed.proj."),
            ("vision_model.encoder.layers.", "visual_encoder.blocks."),
            (".self_attn.qkv.", ".attn.qkv."),
            (".self_attn.projection.", ".attn.proj."),
            (".layer_norm1.", ".norm1."),
            (".layer_norm2.", ".norm2."),
            ("embeddings.word_embeddings.", "Qformer.bert.embeddings.word_embeddings."),
            ("embeddings.position_embeddings.", "Qformer.bert.embeddings.position_embeddings."),
            ("qformer.layernorm.", "Qformer.bert.embeddings.LayerNorm."),
            ("qformer.encoder.", "Qformer.bert.encoder."),
            (".attention.attention.", ".attention.self."),
            (".crossattention.attention.", ".crossattention.self."),
            ("vision_projection.", "vision_proj."),
            ("text_projection.", "text_proj."),
        ]:
            if name.startswith(a) or (a.startswith(".") and a in name):
                name = name.replace(a, b, 1)
        out[name] = v
    return out


def _derived_overrides(hf, tokenizer_dir) -> dict:
    v, q = hf.config.vision_config, hf.config.qformer_config
    return tiny_stage1_overrides(
        tokenizer_dir,
        image_encoder={"name": "eva_vit", "image_size": v.image_size, "patch_size": v.patch_size,
                       "width": v.hidden_size, "depth": v.num_hidden_layers, "heads": v.num_attention_heads,
                       "mlp_dim": v.intermediate_size, "layer_norm_eps": v.layer_norm_eps, "freeze": True},
        ln_vision_eps=v.layer_norm_eps,
        embed_dim=hf.config.image_text_hidden_size,
        qformer={"num_query_token": hf.config.num_query_tokens, "hidden_size": q.hidden_size,
                 "num_hidden_layers": q.num_hidden_layers, "num_attention_heads": q.num_attention_heads,
                 "intermediate_size": q.intermediate_size, "vocab_size": q.vocab_size,
                 "max_position_embeddings": q.max_position_embeddings,
                 "cross_attention_freq": q.cross_attention_frequency},
    )


@pytest.fixture
def lavis_pth(tmp_path, tiny_bert_tokenizer_dir):
    hf = build_tiny_hf_blip2_retrieval(tmp_path / "hf", tiny_bert_tokenizer_dir, seed=5)
    state = hf_to_lavis_names(hf.state_dict())
    hidden, vocab = hf.config.qformer_config.hidden_size, hf.config.qformer_config.vocab_size
    torch.manual_seed(9)
    lm = {  # LAVIS also stores the LM head (decoder tied to the word embeddings) and temp
        "Qformer.cls.predictions.transform.dense.weight": torch.randn(hidden, hidden),
        "Qformer.cls.predictions.transform.dense.bias": torch.randn(hidden),
        "Qformer.cls.predictions.transform.LayerNorm.weight": torch.randn(hidden),
        "Qformer.cls.predictions.transform.LayerNorm.bias": torch.randn(hidden),
        "Qformer.cls.predictions.bias": torch.randn(vocab),
        "temp": torch.tensor(0.123),
        "Qformer.bert.embeddings.position_ids": torch.arange(40)[None],
    }
    lm["Qformer.cls.predictions.decoder.weight"] = state["Qformer.bert.embeddings.word_embeddings.weight"]
    lm["Qformer.cls.predictions.decoder.bias"] = lm["Qformer.cls.predictions.bias"]
    state.update(lm)
    path = tmp_path / "blip2_tiny.pth"
    torch.save({"model": state}, path)
    return path, hf, state


def test_lavis_pth_loads_with_correct_mapping(lavis_pth, tiny_bert_tokenizer_dir):
    path, hf, state = lavis_pth
    model = load_model("blip2_image_text_matching", "tiny", is_eval=True, checkpoint=path,
                       **_derived_overrides(hf, tiny_bert_tokenizer_dir))
    assert model.temp.item() == pytest.approx(0.123)
    torch.testing.assert_close(model.qformer.lm_head.decoder.bias, state["Qformer.cls.predictions.bias"])
    torch.testing.assert_close(model.qformer.lm_head.norm.weight,
                               state["Qformer.cls.predictions.transform.LayerNorm.weight"])
    assert model.qformer.lm_head.decoder.weight is model.qformer.embeddings.word_embeddings.weight
    assert_itm_like_hf(model, hf, tiny_bert_tokenizer_dir, TEXTS)


def test_lavis_pth_unknown_and_missing_keys_are_named(lavis_pth, tmp_path, tiny_bert_tokenizer_dir):
    path, hf, state = lavis_pth
    overrides = _derived_overrides(hf, tiny_bert_tokenizer_dir)
    extra = dict(state, **{"Qformer.bert.encoder.layer.0.attention.self.rotary.weight": torch.zeros(1)})
    torch.save({"model": extra}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"rotary\.weight"):
        load_model("blip2", "tiny", checkpoint=tmp_path / "extra.pth", **overrides)
    lacking = {k: v for k, v in state.items() if k != "itm_head.weight"}
    torch.save(lacking, tmp_path / "lacking.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: itm_head\.weight"):
        load_model("blip2", "tiny", checkpoint=tmp_path / "lacking.pth", **overrides)


def test_own_format_round_trip_and_meta_loading(tmp_path, tiny_bert_tokenizer_dir):
    torch.manual_seed(0)
    model = load_model("blip2", "tiny", is_eval=True, **tiny_stage1_overrides(tiny_bert_tokenizer_dir))
    model.save_pretrained(tmp_path / "ckpt")
    again = load_model("blip2", "tiny", is_eval=True, checkpoint=tmp_path / "ckpt")
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    assert again.qformer.lm_head.decoder.weight is again.qformer.embeddings.word_embeddings.weight
    images = torch.randn(2, 3, 32, 32)
    f1 = model.extract_features({"image": images}, mode="image").image_embeds_proj
    f2 = again.extract_features({"image": images}, mode="image").image_embeds_proj
    torch.testing.assert_close(f1, f2)


def test_load_model_and_preprocess_and_zoo(tiny_bert_tokenizer_dir):
    model, vis, txt = load_model_and_preprocess(
        "blip2_feature_extractor", "tiny", is_eval=True,
        **tiny_stage1_overrides(tiny_bert_tokenizer_dir, qformer={"num_hidden_layers": 1}),
    )
    assert len(model.qformer.layers) == 1 and not model.training
    assert set(vis) == {"train", "eval"} and set(txt) == {"train", "eval"}
    from PIL import Image

    image = vis["eval"](Image.new("RGB", (50, 40), (200, 10, 10)))
    assert image.shape == (3, 32, 32)
    caption = txt["eval"]("A Cat, sitting!")
    feats = model.extract_features({"image": image[None], "text_input": [caption]}, mode="multimodal")
    assert feats.multimodal_embeds.shape == (1, 4, 32)
    table = model_zoo()
    assert "blip2_image_text_matching" in table and "pretrain_vitL" in table


def test_generate_greedy_and_beam(tiny_bert_tokenizer_dir):
    torch.manual_seed(0)
    model = load_model("blip2", "tiny", is_eval=True, **tiny_stage1_overrides(tiny_bert_tokenizer_dir))
    images = torch.randn(2, 3, 32, 32)
    greedy = model.generate({"image": images}, num_beams=1, max_length=6, min_length=3)
    beam = model.generate({"image": images}, num_beams=3, max_length=6, min_length=3)
    sampled = model.generate({"image": images}, use_nucleus_sampling=True, num_captions=2, max_length=6)
    assert len(greedy) == len(beam) == 2 and len(sampled) == 4
    assert all(isinstance(c, str) and c for c in greedy + beam)
    # greedy = argmax of the LM head at each step, recomputed without the cache
    tok = model.tokenizer
    ids = torch.full((1, 1), tok.bos_token_id)
    emb = model.encode_image(images[:1])
    q = model.qformer.query_tokens
    for _ in range(6):  # max_length / min_length count generated tokens ([DEC] not)
        h = model.qformer(query_embeds=q, input_ids=ids, image_embeds=emb, causal=True).last_hidden_state
        logits = model.qformer.lm_logits(h[:, -1])
        if ids.shape[1] < 1 + 3:
            logits[:, tok.sep_token_id] = -float("inf")
        nxt = logits.argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
        if nxt.item() == tok.sep_token_id:
            break
    assert greedy[0] == tok.decode(ids[0], skip_special_tokens=True).strip()


def test_cli_convert_lavis_to_hf(lavis_pth, tmp_path, tiny_bert_tokenizer_dir):
    """`lavislike convert` pipeline: LAVIS .pth -> lavislike folder -> HF folder."""
    import argparse

    from transformers import Blip2ForImageTextRetrieval

    from lavislike.models.convert.cli import convert_main

    path, hf, _ = lavis_pth
    # the .pth has a non-default architecture: go through a lavislike folder carrying it
    model = load_model("blip2_image_text_matching", "tiny", checkpoint=path,
                       **_derived_overrides(hf, tiny_bert_tokenizer_dir))
    model.save_pretrained(tmp_path / "ours")
    convert_main(argparse.Namespace(src=str(tmp_path / "ours"), dst=str(tmp_path / "hf_out"),
                                    arch=None, model_type=None, to="hf"))
    exported = Blip2ForImageTextRetrieval.from_pretrained(str(tmp_path / "hf_out"))
    for k, v in hf.state_dict().items():
        got = exported.state_dict()[k]
        if k.endswith("self_attn.qkv.bias"):  # LAVIS keeps q and v biases only (k's is 0)
            q, kb, val = got.chunk(3)
            torch.testing.assert_close(torch.cat([q, val]), torch.cat([v.chunk(3)[0], v.chunk(3)[2]]), msg=k)
            assert not kb.any()
        else:
            torch.testing.assert_close(got, v, msg=k)
