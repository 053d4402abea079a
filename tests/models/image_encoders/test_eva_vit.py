"""EVA ViT against transformers' Blip2VisionModel, and its LAVIS / HF key layouts."""
import pytest
import torch
import torch.nn.functional as F
from transformers import Blip2VisionConfig, Blip2VisionModel

from lavislike.errors import CheckpointError, ConfigError
from lavislike.models.image_encoders import EvaClipG, EvaViT
from lavislike.registry import IMAGE_ENCODERS

# Shapes unlike the tiny preset's, and an MLP width that is not 4 x width.
HF_KW = dict(
    hidden_size=48,
    intermediate_size=100,
    num_hidden_layers=3,
    num_attention_heads=6,
    image_size=28,
    patch_size=7,
    layer_norm_eps=1e-6,
    qkv_bias=True,
)


@pytest.fixture(scope="module")
def hf_vision(randomize):
    torch.manual_seed(0)
    # every parameter random, the key third of qkv.bias included
    return randomize(Blip2VisionModel(Blip2VisionConfig(**HF_KW))).eval()


def hf_features(model, images):
    """Blip2VisionModel's encoder output, before its post_layernorm."""
    with torch.no_grad():
        return model.encoder(inputs_embeds=model.embeddings(images)).last_hidden_state


def lavis_layout_from_hf(sd):
    """LAVIS eva_vit.py key names written out independently of the converter."""
    out = {
        "cls_token": sd["embeddings.class_embedding"],
        "pos_embed": sd["embeddings.position_embedding"],
        "patch_embed.proj.weight": sd["embeddings.patch_embedding.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embedding.bias"],
    }
    for i in range(HF_KW["num_hidden_layers"]):
        h, l = f"encoder.layers.{i}.", f"blocks.{i}."
        c = HF_KW["hidden_size"]
        out[l + "norm1.weight"] = sd[h + "layer_norm1.weight"]
        out[l + "norm1.bias"] = sd[h + "layer_norm1.bias"]
        out[l + "attn.qkv.weight"] = sd[h + "self_attn.qkv.weight"]
        out[l + "attn.q_bias"] = sd[h + "self_attn.qkv.bias"][:c]
        out[l + "attn.v_bias"] = sd[h + "self_attn.qkv.bias"][2 * c:]
        out[l + "attn.proj.weight"] = sd[h + "self_attn.projection.weight"]
        out[l + "attn.proj.bias"] = sd[h + "self_attn.projection.bias"]
        out[l + "norm2.weight"] = sd[h + "layer_norm2.weight"]
        out[l + "norm2.bias"] = sd[h + "layer_norm2.bias"]
        for fc in ("fc1", "fc2"):
            out[l + f"mlp.{fc}.weight"] = sd[h + f"mlp.{fc}.weight"]
            out[l + f"mlp.{fc}.bias"] = sd[h + f"mlp.{fc}.bias"]
    return out


def test_parity_with_blip2_vision_model_through_hf_converter(hf_vision):
    enc = EvaViT.from_hf_config(hf_vision.config, freeze=True)
    sd = {"vision_model." + k: v for k, v in hf_vision.state_dict().items()}
    enc.load_converted(enc.convert_hf_state_dict(sd))
    images = torch.randn(2, 3, 28, 28)
    ours = enc(images)
    ref = hf_features(hf_vision, images)
    assert ours.shape == (2, 1 + 16, 48)
    assert ref.std() > 0.1  # the reference computes something non-trivial
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_lavis_layout_loads_and_round_trips(hf_vision):
    lavis = lavis_layout_from_hf(hf_vision.state_dict())
    # what eva_vit_g.pth carries beyond BLIP-2's tower: a block past depth, a head
    lavis["blocks.3.norm1.weight"] = torch.ones(48)
    lavis["head.weight"] = torch.ones(2, 48)
    prefixed = {"visual_encoder." + k: v for k, v in lavis.items()}
    enc = EvaViT.from_hf_config(hf_vision.config)
    enc.load_converted(enc.convert_lavis_state_dict(prefixed))
    images = torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(enc(images), hf_features(hf_vision, images), atol=1e-5, rtol=1e-5)
    back = enc.to_lavis_state_dict(prefix="visual_encoder.")
    expected = {k: v for k, v in prefixed.items() if "blocks.3." not in k and "head" not in k}
    assert set(back) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(back[key], value, atol=0, rtol=0)


def test_hf_export_loads_into_transformers(hf_vision):
    enc = EvaViT.from_hf_config(hf_vision.config)
    enc.load_converted(enc.convert_hf_state_dict(hf_vision.state_dict()))
    fresh = Blip2VisionModel(Blip2VisionConfig(**enc.hf_vision_config())).eval()
    exported = enc.to_hf_state_dict()
    assert not any(k.startswith("post_layernorm") for k in exported)
    result = fresh.load_state_dict(exported, strict=False)
    assert set(result.missing_keys) == {"post_layernorm.weight", "post_layernorm.bias"}
    assert not result.unexpected_keys
    images = torch.randn(1, 3, 28, 28)
    # the exported k-bias is zero where the source's was random: outputs still agree
    torch.testing.assert_close(
        hf_features(fresh, images), hf_features(hf_vision, images), atol=1e-5, rtol=1e-5
    )


def test_unknown_keys_are_reported(hf_vision):
    enc = EvaViT.from_hf_config(hf_vision.config)
    sd = dict(hf_vision.state_dict())
    sd["encoder.layers.0.self_attn.rope"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="rope"):
        enc.convert_hf_state_dict(sd)
    with pytest.raises(CheckpointError, match="missing"):
        enc.load_converted({"cls_token": torch.zeros(1, 1, 48)})


def test_pos_embed_interpolation_on_load(hf_vision):
    enc = EvaViT.from_hf_config(hf_vision.config, image_size=42)  # 4x4 -> 6x6 grid
    converted = enc.convert_hf_state_dict(hf_vision.state_dict())
    enc.load_converted(converted)
    assert enc(torch.randn(1, 3, 42, 42)).shape == (1, 1 + 36, 48)
    old = hf_vision.state_dict()["embeddings.position_embedding"]
    grid = old[0, 1:].reshape(4, 4, 48).permute(2, 0, 1)[None]
    want = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    want = want[0].permute(1, 2, 0).reshape(36, 48)
    torch.testing.assert_close(enc.pos_embed[0, 1:], want)
    torch.testing.assert_close(enc.pos_embed[0, :1], old[0, :1])
    same = EvaViT.from_hf_config(hf_vision.config)
    same.load_converted(same.convert_hf_state_dict(hf_vision.state_dict()))
    torch.testing.assert_close(same.pos_embed, old, atol=0, rtol=0)


def test_eva_clip_g_preset_sizes_on_meta():
    with torch.device("meta"):
        enc = EvaClipG.from_config({"precision": "fp32"})
    assert enc.num_features == 1408 and len(enc.blocks) == 39
    assert enc.blocks[0].mlp.fc1.out_features == 6144
    assert enc.pos_embed.shape == (1, 257, 1408)
    assert enc.DEFAULT_PRETRAINED.endswith("/BLIP2/eva_vit_g.pth")
    assert set(enc.hf_vision_config().items()) >= {("intermediate_size", 6144), ("num_hidden_layers", 39)}
    with pytest.raises(ConfigError, match="width"):  # presets fix the architecture
        EvaClipG.from_config({"width": 32})


def test_registry_builds_tiny_and_rejects_bad_precision():
    cls = IMAGE_ENCODERS.get("eva_vit_tiny")
    enc = cls.from_config({"name": "eva_vit_tiny"})
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 17, 32)
    with pytest.raises(ConfigError, match="fp16"):
        cls.from_config({"precision": "fp61"})
