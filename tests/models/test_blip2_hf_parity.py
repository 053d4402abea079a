"""Stage-1 parity with transformers' Blip2ForImageTextRetrieval on tiny random models."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, Blip2ForImageTextRetrieval

from tiny_models import build_tiny_hf_blip2_retrieval, tiny_stage1_overrides
from lavislike.errors import CheckpointError
from lavislike.models import from_hf, load_model

TEXTS = ["a cat sitting on a red mat", "two dogs running in the park at night", "a bus"]


def _hf_scores(hf, folder, images, texts):
    tok = AutoTokenizer.from_pretrained(str(folder))
    enc = tok(texts, padding="longest", truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        itm = hf(pixel_values=images, input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                 use_image_text_matching_head=True).logits_per_image
        itc = hf(pixel_values=images, input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                 use_image_text_matching_head=False).logits_per_image
    return itm, itc


@pytest.mark.parametrize(
    "shape",
    [
        {},
        {"vision": {"image_size": 20, "patch_size": 5, "hidden_size": 16, "num_attention_heads": 2},
         "qformer": {"cross_attention_frequency": 1, "num_hidden_layers": 2, "hidden_size": 16,
                     "num_attention_heads": 2, "intermediate_size": 20},
         "num_query_tokens": 3, "image_text_hidden_size": 8},
    ],
    ids=["default", "other-shape"],
)
def test_itm_and_itc_match_transformers(tmp_path, tiny_bert_tokenizer_dir, shape):
    folder = tmp_path / "hf"
    hf = build_tiny_hf_blip2_retrieval(folder, tiny_bert_tokenizer_dir, seed=3, **shape)
    model = from_hf(folder)
    size = hf.config.vision_config.image_size
    images = torch.randn(3, 3, size, size)
    hf_itm, hf_itc = _hf_scores(hf, folder, images, TEXTS)

    itm = model({"image": images, "text_input": TEXTS}, match_head="itm")
    torch.testing.assert_close(itm, hf_itm, atol=1e-5, rtol=1e-5)
    img = model.retrieval_image_embeds(images)
    txt = model.retrieval_text_embeds(TEXTS)
    torch.testing.assert_close(model.itc_similarity(img["feat"], txt["feat"]), hf_itc, atol=1e-5, rtol=1e-5)
    # the per-pair ITC head is the diagonal of the similarity matrix
    itc = model({"image": images, "text_input": TEXTS}, match_head="itc")
    torch.testing.assert_close(itc[:, 0], hf_itc.diagonal(), atol=1e-5, rtol=1e-5)
    # batched ITM scores = the positive-class logit
    scores = model.itm_scores(img["embeds"], txt["input_ids"], txt["attention_mask"])
    torch.testing.assert_close(scores, hf_itm[:, 1], atol=1e-5, rtol=1e-5)


def test_save_hf_loads_in_transformers_with_same_outputs(tmp_path, tiny_bert_tokenizer_dir):
    torch.manual_seed(0)
    model = load_model(
        "blip2_image_text_matching", "tiny", is_eval=True,
        **tiny_stage1_overrides(
            tiny_bert_tokenizer_dir,
            image_encoder={"name": "eva_vit", "image_size": 24, "patch_size": 6, "width": 16, "depth": 2,
                           "heads": 2, "mlp_dim": 24, "layer_norm_eps": 1e-6, "freeze": True},
            ln_vision_eps=1e-6,
        ),
    )
    with torch.no_grad():  # move away from the init values so that mistakes show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = tmp_path / "exported"
    model.save_hf(out)
    hf = Blip2ForImageTextRetrieval.from_pretrained(str(out)).eval()
    images = torch.randn(2, 3, 24, 24)
    hf_itm, hf_itc = _hf_scores(hf, out, images, TEXTS[:2])
    torch.testing.assert_close(model({"image": images, "text_input": TEXTS[:2]}, match_head="itm"),
                               hf_itm, atol=1e-5, rtol=1e-5)
    img, txt = model.retrieval_image_embeds(images), model.retrieval_text_embeds(TEXTS[:2])
    torch.testing.assert_close(model.itc_similarity(img["feat"], txt["feat"]), hf_itc, atol=1e-5, rtol=1e-5)
    # and back: from_hf of the exported folder scores the same
    again = from_hf(out)
    torch.testing.assert_close(again({"image": images, "text_input": TEXTS[:2]}), hf_itm, atol=1e-5, rtol=1e-5)


def test_save_hf_refuses_encoder_without_hf_equivalent(tmp_path, tiny_bert_tokenizer_dir):
    model = load_model(
        "blip2_image_text_matching", "tiny",
        **tiny_stage1_overrides(tiny_bert_tokenizer_dir, image_encoder={"name": "clip_vit_tiny"}),
    )
    with pytest.raises(CheckpointError, match="Hugging Face"):
        model.save_hf(tmp_path / "x")


def test_from_hf_rejects_other_architectures(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    with pytest.raises(CheckpointError, match="Blip2ForImageTextRetrieval"):
        from_hf(tmp_path)
