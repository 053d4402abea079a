"""Where lavislike keeps downloads and caches; what to say when a configured path is missing.

No machine-specific paths anywhere. A config names files another command creates (a
prepared model in the cache, the weights of an earlier training run); when one is missing,
:func:`require_local` raises one line naming the config key and the path, and the command
that creates it when some tool has registered a hint for that path
(:func:`register_missing_hint`). Tools outside the core (the CPU demo, third-party
packages) are found through the ``lavislike.missing_hints`` entry-point group: each entry
names a module whose import registers its hints, imported only when a path is missing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

from lavislike.errors import ConfigError, LavislikeError

MissingHint = Callable[[Path], Optional[str]]
"""Takes a missing path (absolute, resolved); returns the command that creates it, or None."""

# entry points naming modules that register hints (``pkg.module`` or ``pkg.module:function``)
HINT_GROUP = "lavislike.missing_hints"

# file suffixes that make a relative "org/name" spec a file, not a Hugging Face hub id
_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".json", ".yaml")

_hints: list[MissingHint] = []
_hint_modules_loaded = False


def cache_dir() -> Path:
    """``$LAVISLIKE_CACHE`` or ``~/.cache/lavislike``."""
    return Path(os.environ.get("LAVISLIKE_CACHE", Path.home() / ".cache" / "lavislike")).expanduser()


def cache_path(*parts: str) -> Path:
    """A path under the cache dir; absolute ``parts`` are returned unchanged."""
    path = Path(*parts).expanduser() if parts else Path()
    return path if path.is_absolute() else cache_dir() / path


def register_missing_hint(hint: MissingHint) -> MissingHint:
    """Add ``hint`` to what missing-path errors consult (usable as a decorator).

    Example:
        >>> @register_missing_hint
        ... def my_hint(path):
        ...     return "python -m mypkg prepare" if "mypkg" in path.parts else None
    """
    if hint not in _hints:
        _hints.append(hint)
    return hint


def missing_hint(path: str | os.PathLike) -> Optional[str]:
    """The command that creates ``path``, from the first registered hint that knows it."""
    global _hint_modules_loaded
    if not _hint_modules_loaded:
        _hint_modules_loaded = True
        from importlib.metadata import entry_points

        from lavislike.registry import import_module_or_warn

        for ep in entry_points(group=HINT_GROUP):
            # a broken provider only warns: it must not hide the error being reported
            import_module_or_warn(ep.value, f"entry point '{ep.name}' ({HINT_GROUP})")
    resolved = Path(path).expanduser().resolve()
    for hint in _hints:
        text = hint(resolved)
        if text:
            return text
    return None


def is_local_path(spec: str | os.PathLike) -> bool:
    """True when ``spec`` names a local file or folder, not a URL, a hub id or a ``pkg:`` spec.

    Hugging Face hub ids are ``name`` or ``org/name``; anything absolute, starting with
    ``.`` or ``~``, with two or more ``/``, or ending in a file suffix is local.
    """
    text = str(spec)
    if text.startswith(("http://", "https://", "pkg:", "hf-hub:")):
        return False
    if text.startswith((".", "~")) or os.path.isabs(text) or text.count("/") >= 2:
        return True
    return text.endswith(_FILE_SUFFIXES) or Path(text).exists()


def missing_path_message(key: str, path: str | os.PathLike) -> str:
    """``"<key>: <path> not found[; create it with: <command>]"`` (one line)."""
    message = f"{key}: {path} not found"
    hint = missing_hint(path)
    return f"{message}; create it with: {hint}" if hint else message


def require_local(
    spec: Optional[str | os.PathLike], key: str, error: type[LavislikeError] = ConfigError
) -> None:
    """Raise ``error`` (see :func:`missing_path_message`) when ``spec`` is a local path that
    does not exist; URLs, hub ids and empty values pass.

    Args:
        spec: the configured value.
        key: the config key it came from (``model.llm.path``), named in the message.
        error: the :class:`~lavislike.errors.LavislikeError` subclass to raise.
    """
    if spec and is_local_path(spec) and not Path(spec).expanduser().exists():
        raise error(missing_path_message(key, spec))


def resolve_package_path(spec: str) -> str:
    """``pkg:module/sub/dir`` -> the folder inside that installed package; others unchanged."""
    if not spec.startswith("pkg:"):
        return spec
    import importlib.util

    module, _, sub = spec[4:].partition("/")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"'{spec}': Python package '{module}' is not installed")
    folder = Path(list(found.submodule_search_locations)[0]) / sub
    if not folder.is_dir():
        raise ConfigError(f"'{spec}': {folder} is not a folder")
    return str(folder)
