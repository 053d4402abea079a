"""``model.model_type`` / ``model.arch`` on the command line give that type's parts and weights,
whatever the experiment YAML spells out, and a part never loses its weights silently.

The expected values are read straight from the type YAML files (plain ``yaml``), not
through the config loader under test.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from lavislike.config import load_config, model_types
from lavislike.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
PROJECTS = sorted((REPO / "projects").rglob("*.yaml"))
TYPE_FILES = sorted((REPO / "lavislike" / "models" / "configs").glob("*/*.yaml"))
# the rule (README "Configs"): these part options are how an experiment runs the part,
# kept over a switch when the new type uses the same component; nothing else of a part is
RECIPE = {"image_encoder": {"image_size", "precision", "freeze", "use_grad_checkpoint", "drop_path_rate"},
          "llm": {"dtype", "freeze", "attn_implementation"}}


def _types() -> list[dict]:
    return [yaml.safe_load(p.read_text())["model"] for p in TYPE_FILES]


def test_every_type_file_is_a_registered_type():
    found = {(t["arch"], t["model_type"]) for t in _types()}
    registered = {(arch, name) for arch in {a for a, _ in found} for name in model_types(arch)}
    assert found == registered


def _expected_weights(t: dict) -> dict:
    """What the type file says about the model's parts and weight sources (schema defaults if absent)."""
    enc, llm, qf = t.get("image_encoder") or {}, t.get("llm"), t.get("qformer") or {}
    out = {
        "pretrained": t.get("pretrained"), "finetuned": t.get("finetuned"), "hf_hub_id": t.get("hf_hub_id"),
        "tokenizer": t.get("tokenizer", "bert-base-uncased"), "embed_dim": t.get("embed_dim", 256),
        "image_encoder": {k: v for k, v in enc.items() if k not in RECIPE["image_encoder"]},
        "qformer": {k: v for k, v in qf.items() if k != "gradient_checkpointing"},
    }
    out["image_encoder"].setdefault("pretrained", "")
    out["qformer"].setdefault("init_from", None)
    if llm is not None:
        out["llm"] = {"path": None, "tokenizer": None, "load_weights": True, "hf_config": None,
                      **{k: v for k, v in llm.items() if k not in RECIPE["llm"]}}
    return out


def _resolved_weights(model, t: dict) -> dict:
    m = OmegaConf.to_container(model, resolve=False)
    exp = _expected_weights(t)
    out = {k: m.get(k, 256 if k == "embed_dim" else None) for k in exp if not isinstance(exp[k], dict)}
    for part in ("image_encoder", "qformer", "llm"):
        if part in exp:
            out[part] = {k: m[part].get(k) for k in exp[part]}
    return out


def _model_sections() -> dict[str, list[Path]]:
    """Each distinct ``model:`` section of the project YAMLs -> the projects that hold it
    (the switch reads nothing else, and each section is tested once)."""
    sections: dict[str, list[Path]] = {}
    for project in PROJECTS:
        sections.setdefault(yaml.safe_dump(yaml.safe_load(project.read_text())["model"]), []).append(project)
    return sections


SECTIONS = _model_sections()


@pytest.mark.parametrize("section", SECTIONS, ids=[",".join(p.stem for p in v) for v in SECTIONS.values()])
def test_type_switch_matrix(section, tmp_path):
    own = yaml.safe_load(section)
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"model": own}))
    for t in _types():
        if (t["arch"], t["model_type"]) == (own["arch"], own.get("model_type")):
            continue
        cfg = load_config(exp, [f"model.arch={t['arch']}", f"model.model_type={t['model_type']}"])
        assert (cfg.model.arch, cfg.model.model_type) == (t["arch"], t["model_type"])
        assert _resolved_weights(cfg.model, t) == _expected_weights(t), (SECTIONS[section], t["model_type"])
        if "llm" not in t:
            assert "llm" not in cfg.model


def test_the_readme_examples_switch(lavislike_log):
    stage2 = REPO / "projects/blip2/train/pretrain_stage2.yaml"
    cfg = load_config(stage2, ["model.model_type=pretrain_opt6.7b"])
    assert cfg.model.llm.path == "facebook/opt-6.7b"
    assert cfg.model.pretrained.endswith("blip2_pretrained_opt6.7b.pth")
    # the experiment's own weights are named as replaced, in one line
    assert "model.pretrained" in lavislike_log.text and str(stage2) in lavislike_log.text

    cfg = load_config(REPO / "projects/blip2/train/pretrain_stage1.yaml", ["model.model_type=pretrain_vitL"])
    assert cfg.model.image_encoder.name == "clip_L" and cfg.model.image_encoder.pretrained == "default"
    assert cfg.model.load_pretrained is False  # the recipe: stage 1 from BERT, not released weights


def test_recipe_options_stay_for_the_same_component_only():
    vqa = REPO / "projects/blip2/train/vqav2_ft.yaml"
    enc = load_config(vqa, ["model.model_type=pretrain_opt6.7b"]).model.image_encoder
    assert (enc.name, enc.image_size, enc.freeze, enc.use_grad_checkpoint) == ("eva_clip_g", 490, False, True)
    cfg = load_config(vqa, ["model.arch=blip2_t5", "model.model_type=pretrain_flant5xl_vitL"])
    enc = cfg.model.image_encoder
    assert (enc.name, enc.image_size, enc.freeze, enc.precision) == ("clip_L", 224, True, "fp16")
    assert cfg.model.prompt == "Question: {} Answer:" and cfg.model.qformer_text_input


def test_command_line_part_keys_beat_the_switch():
    stage2 = REPO / "projects/blip2/train/pretrain_stage2.yaml"
    cfg = load_config(stage2, ["model.model_type=pretrain_opt6.7b", "model.llm.path=/mine/opt",
                               "model.pretrained=/mine/stage1.safetensors", "model.image_encoder.image_size=364"])
    assert cfg.model.llm.path == "/mine/opt" and cfg.model.pretrained == "/mine/stage1.safetensors"
    assert cfg.model.image_encoder.image_size == 364 and cfg.model.image_encoder.pretrained == "default"


def test_a_new_arch_alone_takes_its_default_type():
    cfg = load_config(REPO / "projects/blip2/train/pretrain_stage2.yaml", ["model.arch=blip2_t5"])
    assert cfg.model.model_type == "pretrain_flant5xl" and cfg.model.llm.path == "google/flan-t5-xl"


# -- a part's weights are never lost silently ------------------------------------------------
STAGE1 = REPO / "projects/blip2/train/pretrain_stage1.yaml"


def test_renamed_encoder_keeps_published_weights_or_refuses():
    cfg = load_config(STAGE1, ["model.image_encoder.name=clip_L"])
    assert cfg.model.image_encoder.pretrained == "default"  # clip_L's own published weights
    with pytest.raises(ConfigError) as err:  # eva_vit has none: it would be random
        load_config(STAGE1, ["model.image_encoder.name=eva_vit"])
    msg = str(err.value)
    assert "model.image_encoder.pretrained" in msg and "command line" in msg and "\n" not in msg
    cfg = load_config(STAGE1, ["model.image_encoder.name=eva_vit", "model.image_encoder.pretrained=''"])
    assert cfg.model.image_encoder.pretrained == ""  # asked for explicitly


def test_renamed_llm_without_a_path_is_refused():
    with pytest.raises(ConfigError, match=r"model\.llm\.path"):
        load_config(REPO / "projects/blip2/train/pretrain_stage2.yaml", ["model.llm.name=seq2seq_lm"])


# -- error messages that say where --------------------------------------------------------------
def test_yaml_syntax_error_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  arch: blip2\n  qformer: {num_query_token: 8\nrun:\n  seed: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, [])
    assert f"{bad}:4:4:" in str(err.value) and "\n" not in str(err.value)  # where the flow mapping broke


@pytest.mark.parametrize("where", ["file", "command line"])
def test_unknown_arch_names_its_source(tmp_path, where):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"model:\n  arch: {'blip2_optt' if where == 'file' else 'blip2'}\n")
    with pytest.raises(ConfigError) as err:
        load_config(exp, ["model.arch=blip2_optt"] if where == "command line" else [])
    msg = str(err.value)
    assert msg.startswith(f"{exp}: model.arch" if where == "file" else "command line: model.arch"), msg
    assert "Did you mean 'blip2_opt'?" in msg and "plugin" not in msg


@pytest.mark.parametrize("override", ["model.arch=mypkg.blip3", "model.image_encoder.name=siglip_so400m",
                                      "run.task=mypkg.tasks:grounding"])
def test_plugin_looking_names_get_the_plugin_hint(override):
    with pytest.raises(ConfigError) as err:
        load_config(STAGE1, [override])
    msg = str(err.value)
    assert "plugin" in msg and "lavislike.plugins" in msg and "\n" not in msg
