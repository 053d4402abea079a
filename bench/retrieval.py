"""Retrieval evaluation over N images x 5N texts: the ``retrieval`` task vs the LAVIS way.

Ours: :func:`lavislike.tasks.retrieval.retrieval_scores` (what the registered
``retrieval`` task runs before computing recall) on a ``from_hf`` model: batched ITC
similarity, then each query's top-k re-ranked with batched ITM, fusion ``itm+itc``.
Reference: :func:`lavis_retrieval.lavis_compute_sim_matrix`, LAVIS's ``compute_sim_matrix``
loops on transformers' ``Blip2ForImageTextRetrieval`` modules: image and text features in
batches, the similarity matrix image by image, then one ITM forward per query over its k
candidates (image -> text, then text -> image), score = ITM + ITC. Parity: both score
matrices and the recalls.

Run: ``.venv/bin/python bench/retrieval.py [--size small|base] [--threads N]``
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

import common
from common import Row
from lavis_retrieval import lavis_compute_sim_matrix, topk_margin


class RetrievalSet(Dataset):
    """N images with 5 captions each, in the layout retrieval eval datasets have."""

    def __init__(self, pixels: torch.Tensor, texts_per_image: int):
        self.pixels = pixels
        n = pixels.shape[0]
        self.text = [f"{common.CAPTIONS[(i * 7 + j) % len(common.CAPTIONS)]} number {i}"
                     for i in range(n) for j in range(texts_per_image)]
        self.img2txt = {i: list(range(i * texts_per_image, (i + 1) * texts_per_image)) for i in range(n)}
        self.txt2img = {t: t // texts_per_image for t in range(len(self.text))}

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"image": self.pixels[i], "index": i}


def separate(hf, folder: Path, seed: int) -> None:
    """Give the random model distinct image features, then save it again.

    transformers initialises the vision tower with std 1e-10 (``initializer_range``), so
    every image gets the same features and the top-k images of a text are picked by float
    noise: no two implementations would agree on them. Vision weights are redrawn with std
    0.02 and the Q-Former's with 0.05 (norms and biases kept).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name.lower() or name.endswith("bias"):
                continue
            p.copy_(torch.randn(p.shape, generator=g) * (0.02 if name.startswith("vision_model") else 0.05))
    hf.save_pretrained(str(folder))


def retrieval_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Noise around a colour of each image's own (noise alone looks alike to the network)."""
    colour = torch.randn(n, 3, 1, 1, generator=torch.Generator().manual_seed(seed + 1))
    return common.images(n, size, seed) * 0.5 + colour


def run(args) -> list[Row]:
    from lavislike.models import from_hf
    from lavislike.tasks.retrieval import RetrievalTaskConfig, retrieval_scores
    from lavislike.tasks.retrieval_metrics import retrieval_recall

    common.header("retrieval evaluation", args)
    r = args.sizes["retrieval"]
    with tempfile.TemporaryDirectory() as tmp:
        hf, tok = common.build_stage1(Path(tmp), args.sizes, args.seed)
        separate(hf, Path(tmp), args.seed)
        ours = from_hf(tmp)
        ours.tokenizer  # read while the folder exists
    pixels = retrieval_images(r["images"], args.sizes["vision"]["image_size"], args.seed + 2)
    data = RetrievalSet(pixels, r["texts_per_image"])
    loader = DataLoader(data, batch_size=16, shuffle=False)
    k = min(r["k"], len(data.text), len(data))
    cfg = RetrievalTaskConfig(k_test=k, itm_batch_size=128, text_batch_size=256, fusion="itm+itc")

    mine = retrieval_scores(ours, loader, cfg)
    with common.attention_kernel(hf, args.lavis_attention):
        ref = lavis_compute_sim_matrix(hf, tok, pixels, data.text, k)
    with torch.no_grad():
        sim = ours.itc_similarity(ours.retrieval_image_embeds(pixels)["feat"],
                                  ours.retrieval_text_embeds(data.text)["feat"])
    margin = topk_margin(sim, k)
    print(f"  smallest ITC gap at the top-k boundary: {margin:.1e} (float noise ~1e-7 must not pick candidates)")
    if margin < 1e-6:
        raise SystemExit("the random model ranks candidates by float noise; parity would be meaningless")
    diff = common.check_parity("i2t / t2i score matrices", common.max_abs_diff(mine, ref))
    rec_ours = retrieval_recall(mine[0].numpy(), mine[1].numpy(), data.img2txt, data.txt2img)
    rec_ref = retrieval_recall(ref[0].numpy(), ref[1].numpy(), data.img2txt, data.txt2img)
    if rec_ours != rec_ref:
        raise SystemExit(f"parity check failed: recalls differ {rec_ours} vs {rec_ref}")

    pairs = int(((ref[0] != -100) | (ref[1].t() != -100)).sum())
    print(f"  ITM pairs: LAVIS {(ref[0] != -100).sum() + (ref[1] != -100).sum()} "
          f"(i2t and t2i separately), ours {pairs} (each pair once)")
    with common.attention_kernel(hf, args.lavis_attention):
        t_ours, t_ref = common.time_pair(lambda: retrieval_scores(ours, loader, cfg),
                                         lambda: lavis_compute_sim_matrix(hf, tok, pixels, data.text, k),
                                         args.repeats, args.warmup)
    name = f"retrieval eval ({len(data)} img x {len(data.text)} txt)"
    rows = [Row(name, t_ours, t_ref, diff, f"k={k}, ITM+ITC, fp32, LAVIS {args.lavis_attention}", goal=0.2)]
    if bf16_supported():
        def ours_bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return retrieval_scores(ours, loader, cfg)

        low = ours_bf16()
        drift = max(float((m - r)[(m != -100) & (r != -100)].abs().max()) for m, r in zip(low, ref))
        t_low = common.time_one(ours_bf16, args.repeats, args.warmup)
        rows.append(Row(f"{name}, bf16", t_low, t_ref, drift,
                        "ITM under bf16 autocast vs LAVIS fp32 (not identical: parity = score drift)",
                        goal=0.2))
    return rows


def bf16_supported() -> bool:
    """CPU bf16 matmul kernels (AVX512-BF16 / AMX) that make bf16 autocast pay off."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


if __name__ == "__main__":
    common.main_wrapper(run, __doc__)
