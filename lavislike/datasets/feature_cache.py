"""Frozen-feature cache: the frozen image encoder's output, computed once per image.

``lavislike cache-features --cfg-path X`` runs the model's frozen image encoder over every
distinct image of each dataset that sets ``datasets.<name>.feature_cache: <folder>`` and
writes, per split, ``<folder>/<split>/features.bin`` (a memory-mapped ``(N, P, C)`` array,
fp16 by default) and ``meta.json`` (image keys, shape, dtype, which images were unreadable,
and the fingerprint of what made the features). A training or evaluation run with the
same ``feature_cache`` then reads features instead of decoding images: items carry
``image_features`` (the encoder output *before* ``ln_vision``, which is trainable) instead
of ``image``, and the models skip the encoder (``Blip2Base.image_embeds``).

The fingerprint is three hashes: the image encoder's config block, its weights (every
tensor's bytes, so its dtype too) and the image processor (its transform pipeline). The
runner checks them against the model it trains before the first step; any difference
refuses the cache with a one-line error naming what changed.

Random augmentation (a train processor with RandomResizedCrop, flips or RandAugment) and a
cache contradict each other: the cache holds one fixed view per image, so training on it
would silently drop the augmentation. Such a split is refused; use ``blip_image_eval`` as
the train processor with a cache (the BLIP-2 stage-2 recipe's crops add little once the
Q-Former is pre-trained), or train from images.

Trade-off: the cache costs ``N x P x C x 2`` bytes (COCO's 118k images with ViT-g at
224 px: 118k x 257 x 1408 x 2 B = 85 GB) and saves the encoder's forward (about 40% of a
stage-2 step with a frozen ViT-g) plus the image decode in every epoch after the first.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lavislike.common.io import write_json_atomic
from lavislike.errors import ConfigError, DataError

logger = logging.getLogger("lavislike")

CACHE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
META, DATA = "meta.json", "features.bin"
# config keys that do not change the features (the weights hash covers dtype and source)
_NEUTRAL_KEYS = ("freeze", "use_grad_checkpoint", "pretrained", "precision")


# -- fingerprints ------------------------------------------------------------------------
def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_digest(module: nn.Module) -> str:
    """Hash of every tensor of ``module``'s state dict (name, dtype, shape and bytes)."""
    h = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def encoder_fingerprint(model: nn.Module) -> dict[str, str]:
    """``{"encoder_config", "weights"}`` hashes for ``model.image_encoder`` (the weights are
    hashed in full: call it once per run, then add :func:`processor_fingerprint` per split)."""
    from lavislike.models.freezing import cpu_fp16_fallback

    encoder = getattr(model, "image_encoder", None)
    if encoder is None:
        raise ConfigError(f"feature cache: model {type(model).__name__} has no image_encoder")
    param = next(encoder.parameters(), None)
    if param is not None:  # the dtype it will run in (fp16 on the CPU runs as fp32)
        cpu_fp16_fallback(encoder, param.device)
    block = getattr(getattr(model, "cfg", None), "image_encoder", None) or {}
    block = OmegaConf.to_container(block, resolve=True) if isinstance(block, DictConfig) else dict(block)
    block = {k: v for k, v in block.items() if k not in _NEUTRAL_KEYS}
    return {"encoder_config": _hash(json.dumps(block, sort_keys=True, default=str)),
            "weights": weights_digest(encoder)}


def processor_fingerprint(encoder_print: dict[str, str], processor: Any) -> dict[str, str]:
    """The full fingerprint: the encoder's hashes plus the image processor's (its pipeline)."""
    return {**encoder_print, "processor": _hash(repr(processor))}


def is_random_processor(processor: Any) -> bool:
    """Whether an image processor draws random numbers (a ``Random*`` op in its pipeline)."""
    ops = getattr(getattr(processor, "transform", None), "transforms", None)
    if ops is None:
        return bool(getattr(processor, "random", False))
    return any(type(op).__name__.startswith("Random") for op in ops)


# -- the cache on disk ---------------------------------------------------------------------
class FeatureCache:
    """One split's cached features, read through a memory map (opened lazily, per process)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path = self.folder / META
        if not meta_path.is_file():
            raise DataError(f"feature cache {self.folder}: no {META}; create it with: "
                            f"lavislike cache-features --cfg-path <your config>")
        self.meta = json.loads(meta_path.read_text())
        self.dtype = CACHE_DTYPES[self.meta["dtype"]]
        self.shape = tuple(self.meta["shape"])
        self.rows = {key: i for i, key in enumerate(self.meta["keys"])}
        self.bad = set(self.meta.get("bad", []))
        self._array: Optional[np.memmap] = None

    def __getstate__(self) -> dict:  # DataLoader workers open their own memory map
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return len(self.rows)

    def features(self, key: str) -> Optional[torch.Tensor]:
        """The ``(P, C)`` features of image ``key``; None when it was unreadable at caching."""
        if key in self.bad:
            return None
        if key not in self.rows:
            raise DataError(f"feature cache {self.folder}: image '{key}' is not in the cache (made for "
                            f"another annotation file?); rerun lavislike cache-features")
        if self._array is None:
            self._array = np.memmap(self.folder / DATA, dtype=_np_storage(self.dtype), mode="r", shape=self.shape)
        row = torch.from_numpy(np.array(self._array[self.rows[key]]))
        return row.view(self.dtype)

    def check(self, fingerprint: dict[str, str]) -> None:
        """Raise when the features were made by another encoder / weights / processor."""
        made = self.meta.get("fingerprint", {})
        changed = [part for part in ("encoder_config", "weights", "processor") if made.get(part) != fingerprint[part]]
        if changed:
            what = {"encoder_config": "image encoder config", "weights": "image encoder weights",
                    "processor": "image processor"}
            raise DataError(f"feature cache {self.folder} is stale: the {', '.join(what[c] for c in changed)} "
                            f"changed since it was made; rerun lavislike cache-features --cfg-path <your config>")


def _check_range(exact: torch.Tensor, stored: torch.Tensor, dtype: str, folder: Path) -> None:
    """fp16 has a narrow range: refuse features it overflows or flushes towards zero."""
    if dtype != "fp16":
        return
    exact = exact.detach().float().cpu()
    error = ((stored.float() - exact).norm() / exact.norm().clamp_min(1e-30)).item()
    if not torch.isfinite(stored).all() or error > 1e-2:
        raise DataError(f"feature cache {folder}: the encoder's features do not fit fp16 (relative error "
                        f"{error:.1e}; max |x| {exact.abs().max().item():.1e}); use --dtype bf16 or fp32")


def _np_storage(dtype: torch.dtype):
    return np.float32 if dtype == torch.float32 else np.uint16  # fp16 / bf16 as raw 16-bit words


def write_cache(folder: str | Path, keys: list[str], batches: Iterable[torch.Tensor], bad: list[str],
                fingerprint: dict[str, str], dtype: str = "fp16") -> FeatureCache:
    """Write the features of ``keys`` (``batches``: ``(b, P, C)`` tensors in key order) and
    the meta file, last: an interrupted run leaves no cache behind."""
    if dtype not in CACHE_DTYPES:
        raise ConfigError(f"feature cache dtype '{dtype}' is not one of {', '.join(CACHE_DTYPES)}")
    torch_dtype = CACHE_DTYPES[dtype]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META).unlink(missing_ok=True)
    array, start = None, 0
    for exact in batches:
        feats = exact.detach().to("cpu", torch_dtype)
        _check_range(exact, feats, dtype, folder)
        if array is None:
            array = np.memmap(folder / DATA, dtype=_np_storage(torch_dtype), mode="w+",
                              shape=(len(keys), *feats.shape[1:]))
        words = feats if torch_dtype == torch.float32 else feats.view(torch.int16)
        array[start:start + len(feats)] = words.numpy().view(array.dtype)
        start += len(feats)
    if array is None or start != len(keys):
        raise DataError(f"feature cache {folder}: {start} feature rows for {len(keys)} images")
    array.flush()
    write_json_atomic(folder / META, {"keys": keys, "shape": list(array.shape), "dtype": dtype, "bad": bad,
                                      "fingerprint": fingerprint})
    return FeatureCache(folder)


# -- datasets --------------------------------------------------------------------------------
def image_rows(dataset: Any) -> dict[str, dict]:
    """The first row of each distinct image (key: its path relative to ``vis_root``), in order."""
    rows: dict[str, dict] = {}
    for ann in dataset.annotation:
        rows.setdefault(str(ann[dataset.media_key]), ann)
    return rows


def check_cacheable(dataset: Any, where: str) -> None:
    """Refuse datasets a feature cache cannot stand in for (one-line errors)."""
    if getattr(dataset, "media_key", None) != "image" or not hasattr(dataset, "annotation"):
        raise ConfigError(f"{where}: a feature cache needs a map-style image dataset "
                          f"(got {type(dataset).__name__})")
    if hasattr(dataset, "img2txt"):
        raise ConfigError(f"{where}: retrieval evaluation reads images (its ITM re-ranking needs the "
                          f"encoder's features at full precision); leave feature_cache off for it")
    proc = dataset.vis_processor
    if is_random_processor(proc):
        raise ConfigError(f"{where}: the image processor {type(proc).__name__} applies random augmentation, "
                          f"which a feature cache (one fixed view per image) would silently drop; use "
                          f"blip_image_eval for this split, or remove feature_cache")


def attach_feature_cache(dataset: Any, folder: str | Path, where: str) -> Any:
    """Make ``dataset`` read features from ``folder`` instead of images; returns it."""
    check_cacheable(dataset, where)
    dataset.feature_cache = FeatureCache(folder)
    return dataset


def verify_feature_caches(model: nn.Module, datasets: dict[str, dict[str, Any]]) -> None:
    """Check every cached dataset against ``model``'s image encoder (raises when stale)."""
    encoder_print = None
    for splits in datasets.values():
        for ds in splits.values():
            inner = getattr(ds, "datasets", [ds])  # ConcatDataset
            for part in inner:
                cache = getattr(part, "feature_cache", None)
                if cache is None:
                    continue
                encoder_print = encoder_print or encoder_fingerprint(model)
                cache.check(processor_fingerprint(encoder_print, part.vis_processor))


# -- lavislike cache-features --------------------------------------------------------------
class _ImageFiles(torch.utils.data.Dataset):
    """The distinct images of a dataset, processed; an unreadable one gives None."""

    def __init__(self, dataset: Any, rows: list[dict]):
        self.dataset, self.rows = dataset, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        from lavislike.datasets.bad_data import BadSampleError

        try:
            return self.dataset.load_media(self.rows[i])
        except BadSampleError:
            return None


def encode_dataset(model: nn.Module, dataset: Any, batch_size: int, num_workers: int = 0):
    """``(keys, feature batches, bad keys)``: the frozen encoder over each distinct image."""
    rows, bad = image_rows(dataset), []
    keys = list(rows)
    loader = torch.utils.data.DataLoader(_ImageFiles(dataset, list(rows.values())), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=list)
    device = next(model.image_encoder.parameters()).device

    def batches():
        start = 0
        for items in loader:
            missing = [x is None for x in items]
            if any(missing):  # unreadable images get a black image's features; their keys are listed as bad
                bad.extend(k for k, m in zip(keys[start:start + len(items)], missing) if m)
                fill = next((x for x in items if x is not None), None)
                size = int(model.cfg.image_encoder.image_size)
                blank = torch.zeros(3, size, size) if fill is None else torch.zeros_like(fill)
                items = [blank if m else x for x, m in zip(items, missing)]
            images = torch.stack(items).to(device)
            with torch.no_grad():
                yield model.image_encoder(images)
            start += len(items)

    return keys, batches(), bad


def cache_features(cfg: DictConfig, dtype: str = "fp16", batch_size: Optional[int] = None) -> dict[str, Path]:
    """What ``lavislike cache-features`` does: encode every split of each dataset that sets
    ``feature_cache`` with the config's model; returns ``{"<dataset>/<split>": folder}``."""
    from lavislike.datasets.builder import resolve_storage
    from lavislike.models.freezing import is_frozen
    from lavislike.registry import DATASETS
    from lavislike.common.dist import resolve_device
    from lavislike.runners.launch import seed_everything
    from lavislike.runners.precision import store_frozen_parts
    from lavislike.tasks import setup_task

    blocks = {str(n): b for n, b in (cfg.get("datasets") or {}).items() if b.get("feature_cache")}
    if not blocks:
        raise ConfigError("cache-features: no dataset sets feature_cache; add datasets.<name>.feature_cache=<folder>")
    run = cfg.run
    seed_everything(int(run.get("seed", 42)))  # a random (tiny) encoder: the one training builds
    model = setup_task(cfg).build_model(cfg)
    device = resolve_device(str(run.get("device", "auto")))
    model.to(device).eval()
    # the frozen parts' dtypes as the training run will have them (the fingerprint holds them)
    store_frozen_parts(model, run, device)
    if not is_frozen(model.image_encoder):
        raise ConfigError("cache-features: model.image_encoder.freeze is false; only a frozen encoder can be cached")
    batch_size = batch_size or int(run.get("batch_size_eval", 32))
    encoder_print, written = encoder_fingerprint(model), {}
    for name, block in blocks.items():
        plain = OmegaConf.create(OmegaConf.to_container(block, resolve=True))
        root = resolve_storage(plain.feature_cache)
        plain.feature_cache = None
        for split, ds in DATASETS.get(name).from_config(plain, name).build_datasets().items():
            where = f"datasets.{name}.feature_cache ({split})"
            check_cacheable(ds, where)
            keys, batches, bad = encode_dataset(model, ds, batch_size, int(run.get("num_workers", 0)))
            write_cache(root / split, keys, batches, bad, processor_fingerprint(encoder_print, ds.vis_processor), dtype)
            logger.info("%s/%s: %d images cached in %s (%d unreadable)", name, split, len(keys), root / split, len(bad))
            written[f"{name}/{split}"] = root / split
    return written
