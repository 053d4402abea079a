"""Shared test fixtures; the builders they call live in tiny_models.py."""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tiny_models import build_tiny_bert_tokenizer, build_tiny_hf_blip2_retrieval


def pytest_configure(config):
    """Under pytest-xdist the workers share the cores: each gets its part of them (torch's
    default is every core per process, which oversubscribes them and slows every matmul)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


@pytest.fixture(scope="session", autouse=True)
def _temporary_files_in_pytest_folder(tmp_path_factory):
    """Temporary files of the code under test and of the processes it starts (torchrun's
    ``torchelastic_*`` logs, Chromium's profiles, ``tempfile`` users) go to a folder of this
    run, which pytest prunes, instead of piling up in the machine's temporary folder."""
    import tempfile

    folder = str(tmp_path_factory.mktemp("tmp"))
    saved_env, saved_dir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = folder, folder
    yield
    tempfile.tempdir = saved_dir
    if saved_env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved_env


@pytest.fixture(scope="session")
def tiny_bert_tokenizer_dir(tmp_path_factory) -> Path:
    """A folder holding the tiny BERT WordPiece tokenizer with [DEC] (the same in every process)."""
    return build_tiny_bert_tokenizer(tmp_path_factory.mktemp("tiny_bert_tokenizer"))


@pytest.fixture
def tiny_hf_blip2_retrieval(tmp_path, tiny_bert_tokenizer_dir):
    """``(folder, hf_model)``: a tiny random Blip2ForImageTextRetrieval saved in a tmp folder."""
    folder = tmp_path / "hf_blip2_itm"
    return folder, build_tiny_hf_blip2_retrieval(folder, tiny_bert_tokenizer_dir)


@pytest.fixture
def fake_venv(tmp_path) -> Path:
    """A LAVISLIKE_VENV that forwards to the running interpreter, so a run script's own
    set-up step finds everything installed and goes straight to the launch."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    real_bin = Path(sys.executable).parent
    py = venv / "bin" / "python"
    py.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    py.chmod(0o755)
    (venv / "bin" / "activate").write_text(f'export PATH="{real_bin}:$PATH"\n')
    # what _setup_env.sh's fingerprint prints: setup.py's hash, the torch and torchvision versions
    digest = hashlib.sha256((Path(__file__).resolve().parents[1] / "setup.py").read_bytes()).hexdigest()
    (venv / ".lavislike-install-stamp").write_text(f"{digest} {version('torch')} {version('torchvision')}\n")
    return venv


@pytest.fixture
def lavislike_log(caplog):
    """``caplog`` that sees the ``lavislike`` logger (which does not propagate to the root)."""
    logger = logging.getLogger("lavislike")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def _drop_log_handlers() -> None:
    logger = logging.getLogger("lavislike")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture
def fresh_log_handlers():
    """Each in-process run logs to the stderr pytest captures for it: drop the handlers
    ``setup_logging`` bound to an earlier test's streams."""
    yield
    _drop_log_handlers()


@pytest.fixture
def cli(monkeypatch, capsys, fresh_log_handlers):
    """``cli(*args, env=..., cwd=...)``: ``lavislike ARGS`` run in this process by its ``main``,
    as a ``CompletedProcess`` (exit status, stdout, stderr). The imports are paid once per
    session instead of once per command; tests of the entry point itself start a process."""
    from lavislike.cli import main

    def run(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        _drop_log_handlers()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's --help and usage errors
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["lavislike", *args], code, out.out, out.err)

    return run
