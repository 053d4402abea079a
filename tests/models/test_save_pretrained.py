"""``save_pretrained`` on every BLIP-2 model, stage 2 included, read back by ``load_model``.

A stage-2 folder holds what was trained (Q-Former, ``ln_vision``, projection) and the
image encoder; a frozen LLM read from ``llm.path`` stays there (the saved config names
it). The reloaded model must give the saved model's loss on a batch, and its LLM must be
the one in ``llm.path``, read here with ``transformers`` alone.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from blip2_llm_tiny import images
from llm_tiny import save_tiny_llm
from lavislike.models import load_model
from lavislike.models.blip2_llm import Blip2LLM

TEXTS = ["a dog on a couch", "two cats laying on a red blanket"]


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory):
    return save_tiny_llm(tmp_path_factory.mktemp("opt"), "opt", seed=3)


def llm_block(folder) -> dict:
    return {"path": str(folder), "tokenizer": None, "hf_config": None, "load_weights": True, "end_of_text": "\n"}


def loss_of(model) -> float:
    with torch.no_grad():
        return model({"image": images(seed=5), "text_input": TEXTS})["loss"].item()


def spread_(model) -> None:
    # the default init (std 0.02) makes every loss ~log(vocab); wider weights make a
    # wrong or missing tensor change the loss
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and p.dim() > 1:
                p.normal_(0, 0.2)


def test_every_blip2_model_has_save_pretrained():
    from lavislike.models.blip2 import Blip2Qformer

    assert Blip2LLM.save_pretrained is Blip2Qformer.save_pretrained


def test_stage2_round_trip_leaves_the_frozen_llm_in_llm_path(opt_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = load_model("blip2_opt", "tiny", is_eval=True, llm=llm_block(opt_dir))
    spread_(model)
    model.save_pretrained(tmp_path / "ckpt")

    saved = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    encoder = {f"image_encoder.{n}" for n in model.image_encoder.state_dict()}
    assert trained <= set(saved) and encoder <= set(saved)
    assert "llm_proj.weight" in saved and not any(k.startswith("llm.") for k in saved)

    again = load_model("blip2_opt", checkpoint=tmp_path / "ckpt", is_eval=True)
    assert again.cfg.model_type == "tiny" and again.cfg.llm.path == str(opt_dir)
    assert loss_of(again) == pytest.approx(loss_of(model), abs=1e-6)
    reference = AutoModelForCausalLM.from_pretrained(str(opt_dir)).state_dict()
    for k, v in reference.items():
        torch.testing.assert_close(again.state_dict()[f"llm.model.{k}"], v, msg=k)


def test_stage2_trainable_only_takes_the_encoder_from_its_pretrained_file(opt_dir, tmp_path):
    torch.manual_seed(1)
    first = load_model("blip2_opt", "tiny", llm=llm_block(opt_dir))
    encoder_file = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in first.image_encoder.state_dict().items()}, str(encoder_file))
    model = load_model("blip2_opt", "tiny", is_eval=True, llm=llm_block(opt_dir),
                       image_encoder={"pretrained": str(encoder_file)})
    spread_(model)
    model.save_pretrained(tmp_path / "ckpt", trainable_only=True)

    saved = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert set(saved) == set(model.trainable_state_dict())
    assert not any(k.startswith(("llm.", "image_encoder.")) for k in saved)
    again = load_model("blip2_opt", "tiny", checkpoint=tmp_path / "ckpt", is_eval=True)
    for k, v in first.image_encoder.state_dict().items():
        torch.testing.assert_close(again.image_encoder.state_dict()[k], v, msg=k)
    assert loss_of(again) == pytest.approx(loss_of(model), abs=1e-6)


def test_a_random_llm_without_a_source_is_saved(tmp_path):
    # the tiny type builds its OPT from llm.hf_config: nothing to re-read it from
    torch.manual_seed(2)
    model = load_model("blip2_opt", "tiny", is_eval=True)
    spread_(model)
    model.save_pretrained(tmp_path / "ckpt")
    saved = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert any(k.startswith("llm.model.") for k in saved)
    again = load_model("blip2_opt", "tiny", checkpoint=tmp_path / "ckpt", is_eval=True)
    assert loss_of(again) == pytest.approx(loss_of(model), abs=1e-6)
