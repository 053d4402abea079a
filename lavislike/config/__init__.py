"""Typed, layered configs (schema <- component defaults <- experiment YAML <- CLI)."""
from lavislike.config.loader import (
    dataset_config,
    load_config,
    model_config,
    model_types,
    parse_overrides,
    preprocess_config,
    read_yaml,
    save_config,
)
from lavislike.config.schema import ModelConfig, RunConfig

__all__ = [
    "ModelConfig",
    "RunConfig",
    "dataset_config",
    "load_config",
    "model_config",
    "model_types",
    "parse_overrides",
    "preprocess_config",
    "read_yaml",
    "save_config",
]
