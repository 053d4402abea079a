"""Layered configs: merge order, model_type switching, unknown keys, interpolation."""
import textwrap
from dataclasses import dataclass, field
from typing import Any

import pytest
from omegaconf import OmegaConf

from lavislike.config import load_config, model_config, save_config
from lavislike.config.schema import ModelConfig
from lavislike.errors import ConfigError
from lavislike.registry import IMAGE_ENCODERS, MODELS


@dataclass
class _QCfg:
    num_layers: int = 12
    hidden_size: int = 768


@dataclass
class _EncA:
    name: str = "cfgtest_enc_a"
    width: int = 8


@dataclass
class _EncB:
    name: str = "cfgtest_enc_b"
    depth: int = 3


@dataclass
class _ModelCfg(ModelConfig):
    image_encoder: Any = None
    qformer: _QCfg = field(default_factory=_QCfg)
    max_txt_len: int = 32


@pytest.fixture
def fake_model(tmp_path):
    types = tmp_path / "types"
    types.mkdir()
    (types / "base.yaml").write_text(textwrap.dedent("""
        model:
          image_encoder: {name: cfgtest_enc_a, width: 16}
          qformer: {num_layers: 2}
        preprocess:
          vis_processor:
            eval: {name: blip_image_eval, image_size: 32}
    """))
    (types / "big.yaml").write_text(textwrap.dedent("""
        model:
          image_encoder: {name: cfgtest_enc_a, width: 64}
          qformer: {num_layers: 24}
          max_txt_len: 64
    """))
    IMAGE_ENCODERS.register("cfgtest_enc_a", object(), config=_EncA)
    IMAGE_ENCODERS.register("cfgtest_enc_b", object(), config=_EncB)

    class FakeModel:
        MODEL_TYPES = {"base": str(types / "base.yaml"), "big": str(types / "big.yaml")}
        DEFAULT_MODEL_TYPE = "base"

    MODELS.register("cfgtest_model", FakeModel, config=_ModelCfg)
    exp = tmp_path / "exp.yaml"
    exp.write_text(textwrap.dedent("""
        model:
          arch: cfgtest_model
          qformer: {hidden_size: 32}
        run:
          seed: 7
    """))
    yield exp
    for reg, name in ((MODELS, "cfgtest_model"), (IMAGE_ENCODERS, "cfgtest_enc_a"), (IMAGE_ENCODERS, "cfgtest_enc_b")):
        reg.unregister(name)


def test_merge_order_schema_type_experiment_cli(fake_model):
    cfg = load_config(fake_model, ["model.qformer.num_layers=3", "run.init_lr=5e-5"])
    assert cfg.model.qformer.num_layers == 3  # CLI beats the type YAML (2)
    assert cfg.model.qformer.hidden_size == 32  # experiment beats the schema (768)
    assert cfg.model.image_encoder.width == 16  # type YAML beats the encoder schema (8)
    assert cfg.model.max_txt_len == 32  # schema default
    assert cfg.run.seed == 7 and cfg.run.init_lr == 5e-5
    assert cfg.preprocess.vis_processor.eval.image_size == 32


def test_model_type_override_switches_default_yaml(fake_model):
    cfg = load_config(fake_model, ["model.model_type=big"])
    assert cfg.model.model_type == "big"
    assert cfg.model.qformer.num_layers == 24 and cfg.model.max_txt_len == 64
    assert cfg.model.image_encoder.width == 64
    # LAVIS users put overrides after --options
    cfg = load_config(fake_model, ["--options", "model.model_type=big"])
    assert cfg.model.qformer.num_layers == 24


def test_part_name_switch_uses_the_new_schema(fake_model):
    cfg = load_config(fake_model, ["model.image_encoder.name=cfgtest_enc_b", "model.image_encoder.depth=5"])
    assert OmegaConf.to_container(cfg.model.image_encoder) == {"name": "cfgtest_enc_b", "depth": 5}


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.qformer.num_layerz=3", "key 'model.qformer.num_layerz'"),
        ("model.image_encoder.widht=3", "Did you mean: 'width'?"),
        ("model.model_type=bgi", "Did you mean 'big'?"),
        ("modle.arch=x", "Did you mean 'model'?"),
        ("run.init_lr=abc", "key 'run.init_lr'"),
        ("model.image_encoder.name=cfgtest_enc_x", "unknown image encoder 'cfgtest_enc_x'"),
        ("run.task=captionin", "unknown task 'captionin'"),
        ("nonsense", "not of the form key.path=value"),
    ],
)
def test_bad_keys_and_values_are_one_clear_line(fake_model, override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(fake_model, [override])
    msg = str(err.value)
    assert expected in msg and "\n" not in msg


def test_bad_key_in_yaml_names_the_file(fake_model, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  arch: cfgtest_model\n  qformer: {num_layerz: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, [])
    assert str(bad) in str(err.value) and "num_layers" in str(err.value)


def test_missing_file_suggests_near_name(tmp_path):
    (tmp_path / "pretrain_stage1.yaml").write_text("run: {}\n")
    with pytest.raises(ConfigError, match="Did you mean 'pretrain_stage1.yaml'"):
        load_config(tmp_path / "pretrain_stage_1.yaml", [])


def test_model_config_with_nested_overrides(fake_model):
    cfg = model_config("cfgtest_model", "big", {"qformer": {"hidden_size": 48}})
    assert cfg.qformer.num_layers == 24 and cfg.qformer.hidden_size == 48


def test_cache_and_env_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("LAVISLIKE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MY_OUT", str(tmp_path / "out"))
    exp = tmp_path / "e.yaml"
    exp.write_text("run:\n  output_dir: ${oc.env:MY_OUT}\n  experiment: ${cache:coco/images}\n")
    cfg = load_config(exp, [])
    assert cfg.run.output_dir == str(tmp_path / "out")
    assert cfg.run.experiment == str(tmp_path / "cache" / "coco" / "images")
    path = save_config(cfg, tmp_path / "run")
    saved = OmegaConf.load(path)
    assert saved.run.output_dir == str(tmp_path / "out")  # written resolved


def test_imports_list_loads_unpackaged_code(tmp_path, monkeypatch):
    (tmp_path / "my_unpackaged_mod.py").write_text(
        "from lavislike.registry import TASKS\n@TASKS.register('cfgtest_task')\nclass T: pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    exp = tmp_path / "e.yaml"
    exp.write_text("imports: [my_unpackaged_mod]\nrun: {task: cfgtest_task}\n")
    try:
        cfg = load_config(exp, [])
        assert cfg.run.task == "cfgtest_task"
    finally:
        from lavislike.registry import TASKS

        TASKS.unregister("cfgtest_task")
    exp.write_text("imports: [no_such_module_xyz]\n")
    with pytest.raises(ConfigError, match="no_such_module_xyz"):
        load_config(exp, [])
