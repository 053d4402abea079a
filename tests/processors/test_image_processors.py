"""Image processors against torchvision pipelines built here with the same seeds."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from lavislike.errors import ConfigError
from lavislike.processors import build_processor
from lavislike.processors.randaugment import RandomAugment, apply_op

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))


def test_eval_matches_resize_normalize(image):
    proc = build_processor({"name": "blip_image_eval", "image_size": 32})
    ref = transforms.Compose([
        transforms.Resize((32, 32), interpolation=InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])(image)
    out = proc(image)
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(out, ref)
    # the CLIP statistics really are applied: undoing them gives back [0, 1] pixels
    raw = out * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    assert raw.min() > -0.05 and raw.max() < 1.05


def test_blip2_train_matches_crop_flip_normalize(image):
    proc = build_processor({"name": "blip2_image_train", "image_size": 24})
    ref_t = transforms.Compose([
        transforms.RandomResizedCrop(24, scale=(0.5, 1.0), interpolation=InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    for seed in range(4):
        torch.manual_seed(seed)
        out = proc(image)
        torch.manual_seed(seed)
        torch.testing.assert_close(out, ref_t(image))


def test_blip_train_without_randaugment_is_blip2_train(image):
    a = build_processor({"name": "blip_image_train", "image_size": 24, "rand_augment": False})
    b = build_processor({"name": "blip2_image_train", "image_size": 24})
    torch.manual_seed(3)
    x = a(image)
    torch.manual_seed(3)
    torch.testing.assert_close(x, b(image))


def test_blip_train_applies_randaugment(image):
    proc = build_processor({"name": "blip_image_train", "image_size": 24})
    assert any(isinstance(t, RandomAugment) for t in proc.transform.transforms)
    assert proc(image).shape == (3, 24, 24)


def test_randaugment_ops_match_pil(image):
    # shear by +0.15 (magnitude 5 of 10 -> 0.3 * 0.5) is PIL's affine (1, 0.15, 0, 0, 1, 0)
    out = apply_op(image, "ShearX", 5, sign=1.0)
    ref = image.transform(image.size, Image.Transform.AFFINE, (1, 0.15, 0, 0, 1, 0),
                          Image.Resampling.BILINEAR, fillcolor=(128, 128, 128))
    assert np.array_equal(np.asarray(out), np.asarray(ref))
    # brightness at magnitude 5 has factor 1.0: the identity
    assert np.array_equal(np.asarray(apply_op(image, "Brightness", 5)), np.asarray(image))
    rot = apply_op(image, "Rotate", 5, sign=-1.0)
    ref = image.rotate(-15.0, resample=Image.Resampling.BILINEAR, fillcolor=(128, 128, 128))
    assert np.array_equal(np.asarray(rot), np.asarray(ref))


def test_grayscale_input_becomes_rgb():
    proc = build_processor({"name": "blip_image_eval", "image_size": 16})
    assert proc(Image.new("L", (20, 20), 100)).shape == (3, 16, 16)


def test_unknown_key_names_near_match():
    with pytest.raises(ConfigError, match="image_size"):
        build_processor({"name": "blip_image_eval", "image_sise": 16})
    with pytest.raises(ConfigError, match="blip_image_eval"):
        build_processor({"name": "blip_image_evl"})
