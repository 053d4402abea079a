"""Weights named by URL go through the same resumable, verified client as data
(``lavislike.common.fetch``), against a local HTTP server on 127.0.0.1."""
from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save

from http_server import Server
from lavislike.errors import CheckpointError
from lavislike.models.image_encoders.weights import load_weights

STATE = {"blocks.0.attn.qkv.weight": torch.arange(6000.0).reshape(60, 100), "cls_token": torch.ones(1, 1, 8)}
BLOB = save(STATE)


@pytest.fixture
def server(monkeypatch, tmp_path):
    monkeypatch.setenv("LAVISLIKE_CACHE", str(tmp_path / "cache"))

    def no_torch_hub(*args, **kwargs):
        raise AssertionError("weights must not be fetched through torch.hub")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_torch_hub)
    srv = Server()
    srv.files["/models/vit.safetensors"] = BLOB
    yield srv
    srv.close()


def test_weights_url_resumes_a_partial_file(server, tmp_path):
    part = tmp_path / "cache" / "weights" / "vit.safetensors.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(BLOB[:1000])
    sha = hashlib.sha256(BLOB).hexdigest()
    state = load_weights(server.url("/models/vit.safetensors") + f"#sha256={sha}")
    assert server.requests == [("/models/vit.safetensors", "bytes=1000-")]
    assert state.keys() == STATE.keys()
    for key, value in STATE.items():
        assert torch.equal(state[key], value)
    load_weights(server.url("/models/vit.safetensors"))  # cached: no second request
    assert len(server.requests) == 1


def test_weights_checksum_mismatch_is_one_line(server, tmp_path):
    url = server.url("/models/vit.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_weights(url + "#sha256=" + "0" * 64)
    message = str(info.value)
    assert "\n" not in message and url in message and "expected " + "0" * 64 in message
    assert not (tmp_path / "cache" / "weights" / "vit.safetensors").exists()
    assert not (tmp_path / "cache" / "weights" / "vit.safetensors.part").exists()
