"""A LAVIS ``.pth`` of a non-default size loads by its shapes, or fails naming the key.

The file is written from a tiny transformers ``Blip2ForImageTextRetrieval`` of unusual
sizes (renamed to LAVIS keys by hand); loading it with only the options its shapes cannot
hold (attention heads, tokenizer, eps, dropout) must give transformers' scores.
"""
from __future__ import annotations

import pytest
import torch
from test_convert_stage1 import hf_to_lavis_names
from tiny_models import assert_itm_like_hf, build_tiny_hf_blip2_retrieval
from lavislike.errors import ConfigError
from lavislike.models import load_model, load_model_and_preprocess
from lavislike.models.convert.lavis_arch import lavis_arch

VISION = {"image_size": 20, "patch_size": 5, "hidden_size": 16, "num_attention_heads": 2,
          "num_hidden_layers": 3, "intermediate_size": 28}
QFORMER = {"hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 3, "intermediate_size": 20,
           "cross_attention_frequency": 1, "max_position_embeddings": 24}
TEXTS = ["a cat sitting on a red mat", "two dogs running in the park"]


@pytest.fixture(scope="module")
def odd_pth(tmp_path_factory, tiny_bert_tokenizer_dir):
    root = tmp_path_factory.mktemp("odd")
    hf = build_tiny_hf_blip2_retrieval(root / "hf", tiny_bert_tokenizer_dir, seed=8, vision=VISION,
                                       qformer=QFORMER, num_query_tokens=3, image_text_hidden_size=8)
    state = hf_to_lavis_names(hf.state_dict())
    state["Qformer.cls.predictions.decoder.weight"] = state["Qformer.bert.embeddings.word_embeddings.weight"]
    for name, shape in (("transform.dense.weight", (16, 16)), ("transform.dense.bias", (16,)),
                        ("transform.LayerNorm.weight", (16,)), ("transform.LayerNorm.bias", (16,))):
        state[f"Qformer.cls.predictions.{name}"] = torch.randn(shape)
    state["Qformer.cls.predictions.bias"] = torch.zeros(state["Qformer.cls.predictions.decoder.weight"].shape[0])
    state["temp"] = torch.tensor(0.07)
    path = root / "odd.pth"
    torch.save({"model": state}, path)
    return path, hf, state


def _unstored(tokenizer_dir, **extra) -> dict:
    """What the shapes cannot say: heads, eps, dropout, the tokenizer."""
    opts = {
        "tokenizer": str(tokenizer_dir), "ln_vision_eps": 1e-6,
        "image_encoder": {"heads": 2, "layer_norm_eps": 1e-6},
        "qformer": {"num_attention_heads": 2, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    }
    for key, value in extra.items():
        opts[key] = {**opts.get(key, {}), **value} if isinstance(value, dict) else value
    return opts


def test_shapes_give_the_architecture(odd_pth):
    _, _, state = odd_pth
    assert lavis_arch(state) == {
        "image_encoder": {"width": 16, "patch_size": 5, "image_size": 20, "depth": 3, "mlp_dim": 28},
        "qformer": {"num_query_token": 3, "hidden_size": 16, "num_hidden_layers": 3, "cross_attention_freq": 1,
                    "encoder_width": 16, "intermediate_size": 20, "vocab_size": state[
                        "Qformer.bert.embeddings.word_embeddings.weight"].shape[0],
                    "max_position_embeddings": 24},
        "embed_dim": 8,
    }


def test_loads_by_its_shapes_and_scores_as_transformers(odd_pth, tiny_bert_tokenizer_dir):
    path, hf, _ = odd_pth
    model, vis, _ = load_model_and_preprocess("blip2_image_text_matching", "tiny", is_eval=True, checkpoint=path,
                                              **_unstored(tiny_bert_tokenizer_dir))
    assert model.cfg.image_encoder.name == "eva_vit" and model.cfg.image_encoder.image_size == 20
    assert len(model.qformer.layers) == 3 and model.cfg.embed_dim == 8
    from PIL import Image

    assert vis["eval"](Image.new("RGB", (40, 30))).shape == (3, 20, 20)  # the processors follow
    assert_itm_like_hf(model, hf, tiny_bert_tokenizer_dir, TEXTS)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"qformer": {"num_hidden_layers": 2}}, r"^model\.qformer\.num_hidden_layers=2 contradicts .*odd\.pth, "
                                                r"whose weights imply qformer\.num_hidden_layers=3$"),
        ({"qformer": {"cross_attention_freq": 2}}, r"qformer\.cross_attention_freq=1$"),
        ({"embed_dim": 256}, r"embed_dim=8$"),
        ({"image_encoder": {"name": "eva_vit", "width": 32}}, r"image_encoder\.width=16$"),
        ({"image_encoder": {"heads": None}}, r"set model\.image_encoder\.heads"),
        ({"qformer": {"num_attention_heads": None}}, r"set model\.qformer\.num_attention_heads"),
    ],
)
def test_contradictions_name_the_key(odd_pth, tiny_bert_tokenizer_dir, extra, message):
    path = odd_pth[0]
    opts = _unstored(tiny_bert_tokenizer_dir, **extra)
    for block in ("image_encoder", "qformer"):  # None = the user did not give it
        opts[block] = {k: v for k, v in opts[block].items() if v is not None}
    with pytest.raises(ConfigError, match=message) as err:
        load_model("blip2_image_text_matching", "tiny", checkpoint=path, **opts)
    assert "\n" not in str(err.value)


def test_config_path_checks_the_file(odd_pth, tiny_bert_tokenizer_dir):
    """What `lavislike train` builds (model.pretrained = the file): no inference, a one-line
    error instead of torch's size mismatch."""
    from lavislike.config import model_config
    from lavislike.models.loading import load_model_from_config

    path = odd_pth[0]
    cfg = model_config("blip2_image_text_matching", "tiny", {"tokenizer": str(tiny_bert_tokenizer_dir),
                                                             "pretrained": str(path), "load_pretrained": True})
    with pytest.raises(ConfigError, match=r"^model\.image_encoder\.name=eva_vit_tiny does not fit .*odd\.pth, "
                                          r"whose weights imply image_encoder\.name=eva_vit \(its width is 16;"):
        load_model_from_config(cfg)
    cfg.image_encoder = {"name": "eva_vit", "image_size": 20, "patch_size": 5, "width": 16, "depth": 3,
                         "heads": 2, "mlp_dim": 28, "freeze": True}
    with pytest.raises(ConfigError, match=r"^model\.qformer\.num_query_token=4 does not fit .*odd\.pth, "
                                          r"whose weights imply qformer\.num_query_token=3$"):
        load_model_from_config(cfg)


def test_stage2_file_sizes_the_qformer(tmp_path):
    """A LAVIS stage-2 file (no image encoder, no Q-Former text parts): the Q-Former's depth,
    FFN and queries come from it; the loss is transformers'."""
    from blip2_llm_tiny import NUM_QUERY, hf_inputs, images, lavis_state, save_hf_blip2, save_llm
    from lavislike.models.convert.hf import vision_block

    folder, hf, tok = save_hf_blip2(tmp_path / "hf", "opt", seed=2)
    pth = tmp_path / "stage2.pth"
    torch.save({"model": lavis_state(hf.state_dict(), "opt_proj")}, pth)
    encoder = {**vision_block(hf.config.vision_config), "pretrained": ""}
    model = load_model("blip2_opt", "tiny", checkpoint=pth, llm=save_llm(hf, tok, "opt", tmp_path / "llm"),
                       image_encoder=encoder, ln_vision_eps=1e-5,
                       qformer={"num_attention_heads": 4, "hidden_dropout_prob": 0.0,
                                "attention_probs_dropout_prob": 0.0})
    assert len(model.qformer.layers) == 3 and model.qformer.cfg.num_query_token == NUM_QUERY
    # the file has no image encoder (LAVIS's runner leaves frozen parts out): transformers' one
    model.image_encoder.load_converted(model.image_encoder.convert_hf_state_dict(hf.vision_model.state_dict()))
    texts = ["a dog on a couch", "two cats laying on a red blanket"]
    img = images(seed=7)
    ids, mask = hf_inputs(tok, texts, "right", hf.config.image_token_index, suffix="\n")
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :NUM_QUERY] = -100
    with torch.no_grad():
        ref = hf(pixel_values=img, input_ids=ids, attention_mask=mask, labels=labels).loss
        loss = model({"image": img, "text_input": texts})["loss"]
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
