"""Where lavislike keeps downloads and caches; no machine-specific paths anywhere."""
import os
from pathlib import Path


def cache_dir() -> Path:
    """``$LAVISLIKE_CACHE`` or ``~/.cache/lavislike``."""
    return Path(os.environ.get("LAVISLIKE_CACHE", Path.home() / ".cache" / "lavislike")).expanduser()


def cache_path(*parts: str) -> Path:
    """A path under the cache dir; absolute ``parts`` are returned unchanged."""
    path = Path(*parts).expanduser() if parts else Path()
    return path if path.is_absolute() else cache_dir() / path
