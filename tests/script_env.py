"""The environment a test gives what it runs as a new process (a script, a run script, the
server) or as a command in this one: this checkout importable first, nothing downloaded,
one OpenMP thread (two cores run the suite)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def offline_vars(**extra: str) -> dict[str, str]:
    """The variables set on top of the caller's environment (``extra`` last)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**dict(PYTHONPATH=path, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1"), **extra}


def script_env(**extra: str) -> dict[str, str]:
    """This process's environment with :func:`offline_vars` (``extra`` last)."""
    return {**os.environ, **offline_vars(**extra)}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (a server's, a process group's)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
