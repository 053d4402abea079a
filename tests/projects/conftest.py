"""The config matrix's shared preparation (``config_matrix.py``)."""
from __future__ import annotations

import pytest

import config_matrix as cm
from lavislike.config import load_config


@pytest.fixture(scope="session")
def matrix(tmp_path_factory) -> dict:
    """Shared by all configs: a cache root holding every corpus's files, the output root the
    YAMLs chain through (``LAVISLIKE_OUTPUT``), the tiny parts and checkpoints of every arch."""
    cache, outputs = tmp_path_factory.mktemp("matrix_cache"), tmp_path_factory.mktemp("matrix_outputs")
    cm.write_all(cache)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAVISLIKE_OUTPUT", str(outputs))
        mp.delenv("BLIP2_STAGE1_CKPT", raising=False)
        produced_by = cm.producers({p: load_config(p, []) for p in cm.ALL_YAMLS})
    parts = cm.tiny_parts(tmp_path_factory.mktemp("matrix_llms"))
    return {"cache": cache, "outputs": outputs, "produced_by": produced_by, "parts": parts,
            "ckpts": cm.tiny_checkpoints(tmp_path_factory.mktemp("matrix_ckpts"), parts)}


@pytest.fixture(autouse=True)
def _fresh_log_handlers(fresh_log_handlers):
    """Every test here runs the CLI in-process (see ``fresh_log_handlers``)."""
