"""Reading image-encoder weights from a file, a URL or a Hugging Face hub repo.

Nothing here runs at import; a download happens only when a user names a URL or hub
repo as ``pretrained``. Downloads land in ``lavislike.common.paths.cache_dir()``.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch

from lavislike.common.paths import cache_path
from lavislike.errors import CheckpointError

__all__ = ["load_state_dict_file", "load_weights", "local_folder", "read_hf_state", "read_safetensors",
           "require_tokenizer", "unwrap_state_dict"]

_HUB_PREFIX = "hf-hub:"
_WRAPPER_KEYS = ("model", "state_dict", "module")


def unwrap_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint (LAVIS files may nest it under ``model``)."""
    while isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj  # type: ignore[return-value]
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    raise CheckpointError(f"{source}: no state dict of tensors found in the checkpoint")


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file; a truncated or damaged file raises
    one line naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            return {k: fh.get_tensor(k) for k in fh.keys()}, meta
    except Exception as exc:  # SafetensorError, OSError: truncated, garbled header, ...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or damaged?): {reason}") from None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``.pth``/``.bin`` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)[0]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors carry long messages; keep one line
        raise CheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    return unwrap_state_dict(obj, str(path))


def _download(url: str) -> Path:
    """The cached copy of ``url`` (fetched once, resumable; ``#sha256=<hex>`` is checked)."""
    from lavislike.common.fetch import Checksums, fetch

    address, _, fragment = url.partition("#")
    sha256 = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
    target = cache_path("weights", Path(urlparse(address).path).name or "weights.pth")
    return fetch(address, target, Checksums(sha256=sha256), error=CheckpointError)


def _load_hub(repo_id: str, key_prefix: str) -> dict[str, torch.Tensor]:
    """Tensors whose names start with ``key_prefix`` from a hub repo's safetensors."""
    import json

    from huggingface_hub import hf_hub_download
    from safetensors import safe_open

    try:
        index_file = hf_hub_download(repo_id, "model.safetensors.index.json")
        weight_map = json.loads(Path(index_file).read_text())["weight_map"]
        shards = sorted({f for k, f in weight_map.items() if k.startswith(key_prefix)})
    except Exception:
        shards = ["model.safetensors"]  # single-file repos have no index
    out: dict[str, torch.Tensor] = {}
    for shard in shards:
        try:
            local = hf_hub_download(repo_id, shard)
        except Exception as exc:
            raise CheckpointError(
                f"hub repo '{repo_id}': cannot fetch '{shard}': {type(exc).__name__}"
            ) from None
        with safe_open(local, framework="pt") as fh:
            for key in fh.keys():
                if key.startswith(key_prefix):
                    out[key] = fh.get_tensor(key)
    if not out:
        raise CheckpointError(f"hub repo '{repo_id}' holds no '{key_prefix}*' tensors")
    return out


def load_weights(source: str, hub_key_prefix: str = "vision_model.") -> dict[str, torch.Tensor]:
    """Read a state dict from a local file, an ``https://`` URL or a hub repo id.

    Args:
        source: a file path, a URL (downloaded once into the cache through
            :func:`lavislike.common.fetch.fetch`, resumable; a ``#sha256=<hex>`` suffix is
            verified), or a Hugging Face
            repo id (``Salesforce/blip2-itm-vit-g`` or ``hf-hub:Salesforce/...``).
        hub_key_prefix: only tensors under this prefix are read from hub repos (a BLIP-2
            repo also holds the Q-Former and the LLM).

    Raises:
        CheckpointError: the file is missing or unreadable.
    """
    if source.startswith(("http://", "https://")):
        return load_state_dict_file(_download(source))
    if os.path.exists(source) or source.endswith((".pth", ".pt", ".bin", ".safetensors")):
        return load_state_dict_file(source)
    repo_id = source[len(_HUB_PREFIX):] if source.startswith(_HUB_PREFIX) else source
    if repo_id.count("/") == 1 and not repo_id.startswith(("/", ".")):
        return _load_hub(repo_id, hub_key_prefix)
    raise CheckpointError(
        f"pretrained '{source}' is neither a file, an http(s) URL nor a hub repo id "
        "(org/name)"
    )


def local_folder(source: str | os.PathLike) -> Path:
    """A local folder for ``source`` (downloaded from the hub when it is a repo id)."""
    path = Path(source)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(source)))
    except Exception as exc:
        raise CheckpointError(
            f"'{source}' is neither a folder nor a reachable Hugging Face hub id "
            f"({type(exc).__name__})"
        ) from None


def read_hf_state(source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of an HF model folder or hub id (safetensors, else pytorch_model*.bin)."""
    folder = local_folder(source)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors or pytorch_model*.bin weights found")
    state: dict[str, torch.Tensor] = {}
    for f in files:  # damaged files and hostile pickles raise one line naming the file
        state.update(load_state_dict_file(f))
    return state


# what a folder needs for AutoTokenizer to read a real vocabulary (transformers 5 builds a
# one-token tokenizer from a folder holding none of them, without an error)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt",
                   "sentencepiece.bpe.model")


def require_tokenizer(folder: str | os.PathLike, key: str) -> None:
    """Raise naming ``folder`` when it is a local folder without tokenizer files."""
    path = Path(folder)
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(
            f"{key}='{folder}' has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...); "
            "save the tokenizer there or point the key at one"
        )
