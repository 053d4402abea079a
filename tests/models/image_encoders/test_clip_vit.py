"""CLIP ViT against transformers' CLIPVisionModel (quick_gelu, pre_layrnorm)."""
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from lavislike.errors import CheckpointError
from lavislike.models.image_encoders import ClipL, ClipViT

C, LAYERS = 40, 3
HF_KW = dict(
    hidden_size=C,
    intermediate_size=4 * C,
    num_hidden_layers=LAYERS,
    num_attention_heads=5,
    image_size=30,
    patch_size=6,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
OURS = dict(image_size=30, patch_size=6, width=C, depth=LAYERS, heads=5, freeze=False)


@pytest.fixture(scope="module")
def hf_clip(randomize):
    torch.manual_seed(0)
    return randomize(CLIPVisionModel(CLIPVisionConfig(**HF_KW))).eval()


def hf_hidden(model, images, layers=LAYERS):
    """CLIPVisionModel's tokens after ``layers`` blocks, computed module by module."""
    with torch.no_grad():
        h = model.pre_layrnorm(model.embeddings(images))
        for layer in model.encoder.layers[:layers]:
            h = layer(h, attention_mask=None)
            h = h[0] if isinstance(h, tuple) else h
        return h


def lavis_layout_from_hf(sd):
    """OpenAI / LAVIS clip_vit.py names, written out independently of the converter."""
    p = ""  # transformers 5 CLIPVisionModel keys carry no "vision_model." prefix
    out = {
        "conv1.weight": sd[p + "embeddings.patch_embedding.weight"],
        "class_embedding": sd[p + "embeddings.class_embedding"],
        "positional_embedding": sd[p + "embeddings.position_embedding.weight"],
        "ln_pre.weight": sd[p + "pre_layrnorm.weight"],
        "ln_pre.bias": sd[p + "pre_layrnorm.bias"],
        "ln_post.weight": sd[p + "post_layernorm.weight"],  # CLIP's head, unused by BLIP-2
        "ln_post.bias": sd[p + "post_layernorm.bias"],
        "proj": torch.zeros(C, 8),
    }
    for i in range(LAYERS):
        h, l = f"{p}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        out[l + "attn.in_proj_weight"] = torch.cat([sd[h + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        out[l + "attn.in_proj_bias"] = torch.cat([sd[h + f"self_attn.{x}_proj.bias"] for x in "qkv"])
        out[l + "attn.out_proj.weight"] = sd[h + "self_attn.out_proj.weight"]
        out[l + "attn.out_proj.bias"] = sd[h + "self_attn.out_proj.bias"]
        pairs = (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                 ("mlp.c_proj", "mlp.fc2"))
        for ours, theirs in pairs:
            out[l + ours + ".weight"] = sd[h + theirs + ".weight"]
            out[l + ours + ".bias"] = sd[h + theirs + ".bias"]
    return out


def test_lavis_layout_matches_clip_vision_model(hf_clip):
    enc = ClipViT.from_config(OURS)
    lavis = lavis_layout_from_hf(hf_clip.state_dict())
    enc.load_converted(enc.convert_lavis_state_dict({"visual_encoder." + k: v for k, v in lavis.items()}))
    images = torch.randn(2, 3, 30, 30)
    ref = hf_clip(pixel_values=images).last_hidden_state  # before post_layernorm
    torch.testing.assert_close(hf_hidden(hf_clip, images), ref)
    assert ref.std() > 0.1
    torch.testing.assert_close(enc(images), ref, atol=1e-5, rtol=1e-5)
    back = enc.to_lavis_state_dict()
    kept = {k: v for k, v in lavis.items() if not k.startswith(("ln_post", "proj"))}
    assert set(back) == set(kept)
    for key, value in kept.items():
        torch.testing.assert_close(back[key], value, atol=0, rtol=0)


def test_last_block_removed_like_blip2(hf_clip):
    """depth = layers - 1 gives the second-to-last layer's output (BLIP-2's choice)."""
    enc = ClipViT.from_config({**OURS, "depth": LAYERS - 1})
    # checkpoints written by transformers 4 prefix the keys with "vision_model."
    old_style = {"vision_model." + k: v for k, v in hf_clip.state_dict().items()}
    enc.load_converted(enc.convert_hf_state_dict(old_style))
    images = torch.randn(1, 3, 30, 30)
    ref = hf_hidden(hf_clip, images, LAYERS - 1)
    assert (ref - hf_hidden(hf_clip, images)).abs().max() > 0.1  # the last block matters
    torch.testing.assert_close(enc(images), ref, atol=1e-5, rtol=1e-5)


def test_no_hf_blip2_export(hf_clip):
    enc = ClipViT.from_config(OURS)
    with pytest.raises(CheckpointError, match="no Hugging Face Blip2VisionModel equivalent"):
        enc.to_hf_state_dict()


def test_pos_embed_resize_uses_lavis_clip_align_corners(hf_clip):
    enc = ClipViT.from_config({**OURS, "image_size": 18})  # 5x5 -> 3x3
    enc.load_converted(enc.convert_lavis_state_dict(lavis_layout_from_hf(hf_clip.state_dict())))
    old = hf_clip.state_dict()["embeddings.position_embedding.weight"]
    grid = old[1:].reshape(5, 5, C).permute(2, 0, 1)[None]
    want = F.interpolate(grid, size=(3, 3), mode="bicubic", align_corners=True)[0]
    torch.testing.assert_close(enc.pos_embed[0, 1:], want.permute(1, 2, 0).reshape(9, C))
    assert enc(torch.randn(1, 3, 18, 18)).shape == (1, 10, C)


def test_clip_l_preset_on_meta():
    with torch.device("meta"):
        enc = ClipL.from_config({})
    assert enc.num_features == 1024 and len(enc.blocks) == 23
    assert enc.pos_embed.shape == (1, 257, 1024) and enc.patch_embed.proj.bias is None
    assert enc.DEFAULT_PRETRAINED.endswith("/BLIP2/clip_vit_L.pth")
