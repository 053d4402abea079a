"""The environment a test gives what it runs as a new process (a script, a run script, the
server) or as a command in this one: this checkout importable first, nothing downloaded,
one OpenMP thread (two cores run the suite)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
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


def env_without_torchrun() -> dict:
    """This process's environment without torchrun's variables, one OpenMP thread: what a
    test gives ``torchrun`` (or a script's one-process run) so that it starts its own group."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def torchrun_command(script: Path, *args: str, nproc: int = 2) -> list[str]:
    """The command that starts ``script`` under ``torchrun`` with ``nproc`` processes on free ports."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port=0",
            "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0", str(script), *args]


def torchrun(script: Path, *args: str, nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    """``script`` under ``torchrun`` with ``nproc`` gloo processes on free ports, output captured."""
    return subprocess.run(torchrun_command(script, *args, nproc=nproc), env=env_without_torchrun(),
                          capture_output=True, text=True, timeout=timeout)
