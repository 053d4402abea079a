"""Shared test fixtures; the builders they call live in tiny_models.py."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from tiny_models import build_tiny_bert_tokenizer, build_tiny_hf_blip2_retrieval


@pytest.fixture(scope="session")
def tiny_bert_tokenizer_dir(tmp_path_factory) -> Path:
    """A folder holding a tiny trained BERT WordPiece tokenizer with [DEC]."""
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
    digest = hashlib.sha256((Path(__file__).resolve().parents[1] / "setup.py").read_bytes()).hexdigest()
    (venv / ".lavislike-install-stamp").write_text(digest + "\n")
    return venv


@pytest.fixture
def lavislike_log(caplog):
    """``caplog`` that sees the ``lavislike`` logger (which does not propagate to the root)."""
    import logging

    logger = logging.getLogger("lavislike")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)
