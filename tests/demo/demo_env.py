"""The demo's cache and output folders pointed at a test's temp root."""
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def demo_env(root: Path, out: str = "out"):
    """``LAVISLIKE_CACHE`` = ``root/cache`` and ``LAVISLIKE_OUTPUT`` = ``root/<out>`` inside the block
    (a manual MonkeyPatch: module-scoped fixtures cannot take the ``monkeypatch`` fixture)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LAVISLIKE_CACHE", str(root / "cache"))
    mp.setenv("LAVISLIKE_OUTPUT", str(root / out))
    try:
        yield root
    finally:
        mp.undo()
