"""Stage 2 starts from stage 1 (``blip2_opt`` with ``model.pretrained`` naming a stage-1
checkpoint), as LAVIS's does (``strict=False``: a stage-1 checkpoint has no ``llm_proj`` and
no LLM), from every stage-1 format written here: a runner checkpoint (trainable only), a
``save_pretrained`` folder, a LAVIS ``.pth`` and that ``.pth`` converted to our format.

Checked against the stage-1 model itself: the shared parts (query tokens, the Q-Former's
query path, ``ln_vision``, the image encoder) are its tensors; the stage-2-only keys are
reported in one log line; a key stage 2 has no place for, or a mis-shaped one, still fails
in one line naming it.
"""
from __future__ import annotations

import argparse
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from lavislike.common.checkpoint import save_weights
from lavislike.errors import CheckpointError
from lavislike.models import load_model
from lavislike.models.convert.cli import convert_main
from lavislike.models.convert.lavis import to_lavis_state

SHARED = ("qformer.query_tokens", "ln_vision.weight", "qformer.embeddings.norm.weight",
          "qformer.layers.0.self_attn.query.weight", "qformer.layers.0.cross_attn.key.weight",
          "qformer.layers.1.query_ffn.fc1.weight", "image_encoder.patch_embed.proj.weight")


@pytest.fixture(scope="module")
def stage1():
    torch.manual_seed(0)
    model = load_model("blip2", "tiny", load_pretrained=False, is_eval=True)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)  # unlike any fresh init
    return model


def write(stage1, kind: str, folder) -> str:
    """``stage1`` saved as ``kind``; returns what ``model.pretrained`` names."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "runner":
        path = folder / "model_best.safetensors"
        save_weights(path, stage1.trainable_state_dict(), {"global_step": 5})
        return str(path)
    if kind == "save_pretrained":
        stage1.save_pretrained(folder / "stage1")
        return str(folder / "stage1")
    pth = folder / "blip2_stage1.pth"
    torch.save({"model": to_lavis_state(stage1)}, pth)
    if kind == "lavis_pth":
        return str(pth)
    convert_main(argparse.Namespace(src=str(pth), dst=str(folder / "converted"), arch="blip2", model_type="tiny"))
    return str(folder / "converted")


def stage2_from(source: str):
    return load_model("blip2_opt", "tiny", load_pretrained=True, pretrained=source)


@pytest.mark.parametrize("kind", ["runner", "save_pretrained", "lavis_pth", "converted_lavis_pth"])
def test_every_stage1_format_initialises_stage2(stage1, kind, tmp_path, caplog):
    source = write(stage1, kind, tmp_path)
    with caplog.at_level(logging.INFO, logger="lavislike"):
        model = stage2_from(source)
    assert all(not p.is_meta for p in model.parameters())
    theirs = stage1.state_dict()
    mine = model.state_dict()
    for key in SHARED:
        if kind == "runner" and key.startswith("image_encoder."):
            continue  # a runner saves what it trains: the frozen encoder comes from its own source
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=0, msg=key)
    # the projection is new (initialised, not read), and said so in one line
    lines = [r.getMessage() for r in caplog.records if "llm_proj.* (2)" in r.getMessage()]
    assert len(lines) == 1 and source in lines[0], [r.getMessage() for r in caplog.records]
    assert model({"image": torch.randn(2, 3, 32, 32), "text_input": ["a cat", "a dog"]})["loss"].isfinite()


def test_a_key_stage2_has_no_place_for_still_fails_naming_it(stage1, tmp_path):
    source = write(stage1, "save_pretrained", tmp_path)
    weights = f"{source}/model.safetensors"
    state = load_file(weights)
    state["qformer.layers.0.self_attn.bogus.weight"] = torch.zeros(2)
    save_file(state, weights)
    with pytest.raises(CheckpointError, match=r"unexpected keys: .*qformer\.layers\.0\.self_attn\.bogus\.weight"):
        stage2_from(source)


def test_a_mis_shaped_stage1_key_still_fails_naming_it(stage1, tmp_path):
    source = write(stage1, "save_pretrained", tmp_path)
    weights = f"{source}/model.safetensors"
    state = load_file(weights)
    state["qformer.query_tokens"] = torch.zeros(1, 7, 32)
    save_file(state, weights)
    with pytest.raises(CheckpointError, match=r"qformer\.query_tokens") as err:
        stage2_from(source)
    assert "\n" not in str(err.value)


def test_a_stage1_folder_as_checkpoint_of_stage2_says_to_give_it_as_pretrained(stage1, tmp_path):
    source = write(stage1, "save_pretrained", tmp_path)
    with pytest.raises(CheckpointError) as err:
        load_model("blip2_opt", "tiny", checkpoint=source)
    message = str(err.value)
    assert "\n" not in message and "'blip2' model" in message and f"pretrained='{source}'" in message
    # and what it proposes works
    assert torch.equal(stage2_from(source).state_dict()["qformer.query_tokens"], stage1.state_dict()["qformer.query_tokens"])
