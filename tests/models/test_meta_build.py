"""Loading builds on ``meta`` without patching torch, and gives the model a normal build gives.

``load_model(..., checkpoint=...)`` builds the parameters on ``meta`` and assigns the saved
tensors; the frozen LLM is read for real from ``llm.path``. Checked: torch's
``nn.Module.register_parameter`` is its own function during and after the build, no
registration hook outlives it, a module built meanwhile in another thread is untouched,
and the loaded model equals the saved one tensor for tensor (buffers included), loss too.
"""
from __future__ import annotations

import threading

import pytest
import torch
from torch import nn
from torch.nn.modules import module as torch_module

from blip2_llm_tiny import images
from llm_tiny import save_tiny_llm
from lavislike.models import load_model
from lavislike.models.blip2_llm import Blip2LLM


def _is_torchs_own(fn) -> bool:
    return fn.__module__ == "torch.nn.modules.module" and fn.__qualname__ == "Module.register_parameter"


def test_meta_build_patches_nothing_and_loads_the_same_model(tmp_path, monkeypatch):
    opt_dir = save_tiny_llm(tmp_path / "opt", "opt", seed=3)
    llm = {"path": str(opt_dir), "tokenizer": None, "hf_config": None, "load_weights": True, "end_of_text": "\n"}
    torch.manual_seed(0)
    model = load_model("blip2_opt", "tiny", is_eval=True, llm=llm)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dim() > 1:
                p.normal_(0, 0.2)  # far from the init, so a tensor not loaded shows
    model.save_pretrained(tmp_path / "ckpt")

    seen = {}
    built = Blip2LLM.from_config.__func__

    def spy(cls, cfg):
        seen["register_parameter"] = nn.Module.register_parameter
        other = []
        thread = threading.Thread(target=lambda: other.append(nn.Linear(2, 2).weight))
        thread.start()
        thread.join()
        seen["other_thread_meta"] = other[0].is_meta
        out = built(cls, cfg)
        seen["built_on_meta"] = out.qformer.query_tokens.is_meta
        return out

    monkeypatch.setattr(Blip2LLM, "from_config", classmethod(spy))
    again = load_model("blip2_opt", checkpoint=tmp_path / "ckpt", is_eval=True)

    assert seen["built_on_meta"], "loading a checkpoint should build on meta"
    assert _is_torchs_own(seen["register_parameter"]) and _is_torchs_own(nn.Module.register_parameter)
    assert not seen["other_thread_meta"]
    assert not torch_module._global_parameter_registration_hooks
    assert not any(t.is_meta for t in again.state_dict().values())
    ours, theirs = again.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)
    batch = {"image": images(seed=5), "text_input": ["a dog on a couch", "two cats"]}
    with torch.no_grad():
        assert again(batch)["loss"].item() == pytest.approx(model(batch)["loss"].item(), abs=1e-6)
