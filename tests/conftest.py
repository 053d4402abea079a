"""Shared test fixtures; the builders they call live in tiny_models.py."""
from __future__ import annotations

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
