"""Damaged, mis-shaped and hostile weight files: one line naming the file (and the key or
shape), through the API and the command line (exit 2); a hostile pickle never runs."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tiny_models import tiny_stage1_overrides
from lavislike.errors import CheckpointError
from lavislike.models import from_hf, load_model


class Hostile:
    """Unpickling this runs a shell command: it must never happen."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_file(path: Path, marker: Path) -> Path:
    torch.save({"model": {"x": torch.zeros(1)}, "evil": Hostile(marker)}, path)
    return path


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def saved(tmp_path, tiny_bert_tokenizer_dir):
    model = load_model("blip2", "tiny", **tiny_stage1_overrides(tiny_bert_tokenizer_dir))
    model.save_pretrained(tmp_path / "ours")
    return tmp_path / "ours"


def assert_one_line(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, out.stderr
    lines = [l for l in out.stderr.splitlines() if l.strip() and " INFO " not in l and " WARNING " not in l]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- the API ----------------------------------------------------------------------------------
def test_wrong_shape_names_key_and_shapes(saved):
    weights = saved / "model.safetensors"
    state = load_file(str(weights))
    state["qformer.query_tokens"] = torch.zeros(1, 7, 32)
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"ours: qformer\.query_tokens has shape \(1, 7, 32\), the model "
                                              r"built from the config has \(1, 4, 32\)") as err:
        load_model("blip2", checkpoint=saved)
    assert "\n" not in str(err.value)


def test_truncated_safetensors_names_the_file(saved):
    truncate(saved / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file") as err:
        load_model("blip2", checkpoint=saved)
    assert "\n" not in str(err.value)


def test_hostile_pickle_never_runs(tmp_path, tiny_hf_blip2_retrieval):
    marker = tmp_path / "pwned"
    with pytest.raises(CheckpointError, match=r"evil\.pth: cannot be read with torch\.load\(weights_only=True\)"):
        load_model("blip2", "tiny", checkpoint=hostile_file(tmp_path / "evil.pth", marker))
    folder, _ = tiny_hf_blip2_retrieval
    (folder / "model.safetensors").unlink()
    hostile_file(folder / "pytorch_model.bin", marker)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: cannot be read"):
        from_hf(folder)
    assert not marker.exists()


def test_hf_folder_damaged_or_without_tokenizer(tiny_hf_blip2_retrieval):
    folder, _ = tiny_hf_blip2_retrieval
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match=r"from_hf='.*' has no tokenizer files"):
        from_hf(folder)


def test_hf_folder_truncated_weights(tiny_hf_blip2_retrieval):
    folder, _ = tiny_hf_blip2_retrieval
    truncate(folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        from_hf(folder)


# -- the command line -----------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["shape", "truncated", "hostile"])
def test_convert_and_train_exit_2_with_one_line(saved, tmp_path, damage, cli):
    marker = tmp_path / "pwned"
    if damage == "hostile":
        source = hostile_file(tmp_path / "evil.pth", marker)
        needles = ("evil.pth", "weights_only=True")
    else:
        weights = saved / "model.safetensors"
        if damage == "truncated":
            truncate(weights)
            needles = ("model.safetensors", "truncated")
        else:
            state = load_file(str(weights))
            state["itm_head.weight"] = torch.zeros(3, 32)
            save_file(state, str(weights))
            needles = ("itm_head.weight", "(3, 32)", "(2, 32)")
        source = saved
    assert_one_line(cli("convert", str(source), str(tmp_path / "out"), "--arch", "blip2", cwd=tmp_path), *needles)
    assert not marker.exists()
    if damage != "shape":  # one train run: the model build is shared
        return
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"model: {{arch: blip2, model_type: tiny, load_pretrained: true, pretrained: '{source}'}}\n"
                   f"datasets: {{coco_caption: {{}}}}\nrun: {{device: cpu, output_dir: '{tmp_path / 'o'}'}}\n")
    assert_one_line(cli("train", "--cfg-path", str(exp), cwd=tmp_path, env={"LAVISLIKE_CACHE": str(tmp_path)}),
                    *needles)
    assert not marker.exists()
