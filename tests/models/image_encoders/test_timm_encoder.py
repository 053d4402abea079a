"""The generic timm adapter on timm's own tiny test models (no downloads)."""
import pytest
import timm
import torch

from lavislike.errors import CheckpointError, ConfigError
from lavislike.registry import IMAGE_ENCODERS


def test_cnn_feature_map_becomes_tokens():
    enc = IMAGE_ENCODERS.get("timm").from_config({"model_name": "test_convnext", "freeze": True})
    ref = timm.create_model("test_convnext", pretrained=False, num_classes=0, global_pool="")
    ref.load_state_dict({k[len("model."):]: v for k, v in enc.state_dict().items()})
    ref.eval()
    images = torch.randn(2, 3, 64, 64)
    fmap = ref.forward_features(images)  # (B, C, H, W)
    want = fmap.permute(0, 2, 3, 1).reshape(2, -1, fmap.shape[1])
    out = enc(images)
    assert out.shape[-1] == enc.num_features == fmap.shape[1]
    torch.testing.assert_close(out, want)
    enc.train()
    assert not enc.model.training


def test_vit_tokens_and_image_size():
    enc = IMAGE_ENCODERS.get("timm").from_config(
        {"model_name": "test_vit", "image_size": 64, "freeze": False}
    )
    out = enc(torch.randn(1, 3, 64, 64))
    grid = enc.model.patch_embed.grid_size
    assert out.shape == (1, enc.model.num_prefix_tokens + grid[0] * grid[1], enc.num_features)
    with pytest.raises(CheckpointError, match="no Hugging Face"):
        enc.to_hf_state_dict()


def test_state_dict_file_with_other_grid_is_resampled(tmp_path):
    src = timm.create_model("test_vit", pretrained=False, img_size=64)
    path = tmp_path / "vit.pth"
    torch.save(src.state_dict(), path)  # head included: dropped on load
    enc = IMAGE_ENCODERS.get("timm").from_config(
        {"model_name": "test_vit", "image_size": 96, "pretrained": str(path)}
    )
    assert enc.model.pos_embed.shape[1] != src.pos_embed.shape[1]
    torch.testing.assert_close(enc.model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_unknown_model_name_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'convnext_tiny'"):
        IMAGE_ENCODERS.get("timm").from_config({"model_name": "convnext_tiyn"})
