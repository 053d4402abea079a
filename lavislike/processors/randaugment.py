"""RandAugment as BLIP's ``blip_image_train`` applies it (LAVIS ``RandomAugment(2, 5)``).

Facts from the reference: two operations drawn with replacement from a ten-op list, each
applied with probability 0.5 at magnitude 5 of 10. At that magnitude the enhance
operations (Brightness, Sharpness) have factor ``5/10 * 1.8 + 0.1 = 1.0``; shear is
+-0.15, translation +-5 pixels (absolute), rotation +-15 degrees, with grey (128) fill.
Randomness comes from torch's generator so DataLoader workers draw different ops.
"""
from __future__ import annotations

import torch
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10
FILL = (128, 128, 128)
BLIP_AUGS = (
    "Identity",
    "AutoContrast",
    "Brightness",
    "Sharpness",
    "Equalize",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
)


def _sign() -> float:
    return -1.0 if torch.rand(()).item() > 0.5 else 1.0


def _affine(img: Image.Image, coeffs: tuple) -> Image.Image:
    # PIL's affine maps output (x, y) to input (a x + b y + c, d x + e y + f).
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=FILL)


def apply_op(img: Image.Image, op: str, level: float, sign: float | None = None) -> Image.Image:
    """Apply one named operation at ``level`` (0..10) to an RGB PIL image.

    ``sign`` (+1 / -1) fixes the direction of geometric ops; None draws it.
    """
    frac = level / MAX_LEVEL
    s = sign if sign is not None else _sign()
    if op == "Identity":
        return img
    if op == "AutoContrast":
        return ImageOps.autocontrast(img)
    if op == "Equalize":
        return ImageOps.equalize(img)
    if op in ("Brightness", "Sharpness", "Color", "Contrast"):
        factor = frac * 1.8 + 0.1
        enhancer = {"Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness,
                    "Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast}[op]
        return enhancer(img).enhance(factor)
    if op == "ShearX":
        return _affine(img, (1, s * frac * 0.3, 0, 0, 1, 0))
    if op == "ShearY":
        return _affine(img, (1, 0, 0, s * frac * 0.3, 1, 0))
    if op == "TranslateX":
        return _affine(img, (1, 0, s * frac * 10.0, 0, 1, 0))
    if op == "TranslateY":
        return _affine(img, (1, 0, 0, 0, 1, s * frac * 10.0))
    if op == "Rotate":
        return img.rotate(s * frac * 30.0, resample=Image.Resampling.BILINEAR, fillcolor=FILL)
    raise ValueError(f"unknown RandAugment op '{op}'; known: {', '.join(BLIP_AUGS)}")


class RandomAugment:
    """Draw ``n`` ops (with replacement); apply each with probability 0.5 at ``magnitude``.

    Args:
        n: number of ops per image.
        magnitude: level on a 0..10 scale.
        augs: op names to draw from.
    """

    def __init__(self, n: int = 2, magnitude: float = 5, augs: tuple[str, ...] = BLIP_AUGS):
        self.n, self.magnitude, self.augs = n, magnitude, tuple(augs)

    def __call__(self, img: Image.Image) -> Image.Image:
        picks = torch.randint(len(self.augs), (self.n,)).tolist()
        for i in picks:
            if torch.rand(()).item() > 0.5:
                continue
            img = apply_op(img, self.augs[i], self.magnitude)
        return img

    def sample_video_ops(self) -> list[tuple[str, float]]:
        """Ops for a whole clip (LAVIS ``VideoRandomAugment``: drawn without replacement,
        always applied); one sign per op so every frame moves alike."""
        picks = torch.randperm(len(self.augs))[: self.n].tolist()
        return [(self.augs[i], _sign()) for i in picks]

    def apply_ops(self, img: Image.Image, ops: list[tuple[str, float]]) -> Image.Image:
        for op, sign in ops:
            img = apply_op(img, op, self.magnitude, sign)
        return img

    def __repr__(self) -> str:
        return f"RandomAugment(n={self.n}, magnitude={self.magnitude})"
