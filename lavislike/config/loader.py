"""Layered configs: schema <- component default YAML <- experiment YAML <- command line.

Every layer is merged on its own so an error names the file (or the command line) that
introduced the bad key or value, with OmegaConf's near-match suggestion.

Example:
    >>> cfg = load_config("projects/blip2_tiny/train/pretrain_stage1.yaml",
    ...                   ["run.init_lr=1e-4", "model.model_type=tiny"])
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lavislike.common.paths import cache_path
from lavislike.common.suggest import did_you_mean
from lavislike.config.schema import (
    TOP_LEVEL_KEYS,
    ModelConfig,
    PreprocessConfig,
    RunConfig,
)
from lavislike.config.type_switch import rebase_experiment
from lavislike.errors import ConfigError
from lavislike.registry import (
    DATASETS,
    IMAGE_ENCODERS,
    LLMS,
    LR_SCHEDULERS,
    MODELS,
    RUNNERS,
    TASKS,
    import_strict,
)

# Model-config keys that pick a registry entry by their ``name`` and pass it the rest.
PART_REGISTRIES = {"image_encoder": IMAGE_ENCODERS, "llm": LLMS}
# The key of each part's block that says where its weights come from.
PART_WEIGHTS = {"image_encoder": "pretrained", "llm": "path"}


def _cache_resolver(*parts: Any) -> str:
    return str(cache_path(*map(str, parts)))


if not OmegaConf.has_resolver("cache"):
    # OmegaConf 2.4 renamed register_new_resolver (deprecated there) to register_resolver.
    if hasattr(OmegaConf, "register_resolver") and OmegaConf.__dict__.get("register_new_resolver") is not None:
        OmegaConf.register_resolver("cache", _cache_resolver)
    else:
        OmegaConf.register_new_resolver("cache", _cache_resolver)


# -- small helpers ----------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    """OmegaConf messages carry a multi-line context block; keep the first line."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _full_key(exc: BaseException, prefix: str) -> str:
    key = getattr(exc, "full_key", None) or ""
    return f"{prefix}.{key}" if prefix and key else (key or prefix)


def merge_layer(base: DictConfig, layer: Any, source: str, prefix: str = "") -> DictConfig:
    """``OmegaConf.merge(base, layer)``; errors name ``source`` and the key path."""
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: key '{_full_key(exc, prefix)}': {_one_line(exc)}") from None


def read_yaml(path: str | Path) -> DictConfig:
    """Read a YAML file into a DictConfig; a clear error when missing or malformed."""
    path = Path(path)
    if not path.is_file():
        near = did_you_mean(path.name, [p.name for p in path.parent.glob("*.yaml")]) if path.parent.is_dir() else ""
        raise ConfigError(f"config file not found: {path}.{near}")
    try:
        cfg = OmegaConf.load(path)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise ConfigError(f"{where}: not valid YAML: {what}") from None
    except Exception as exc:  # other yaml.YAMLError, OmegaConf errors
        raise ConfigError(f"{path}: not valid YAML: {_one_line(exc)}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level, got a list")
    return cfg


def parse_overrides(overrides: Sequence[str] | None) -> DictConfig:
    """``["a.b=c", ...]`` (also after a literal ``--options``) -> DictConfig."""
    items = [o for o in (overrides or []) if o != "--options"]
    bad = [o for o in items if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"command line: override '{bad[0]}' is not of the form key.path=value")
    try:
        return OmegaConf.from_dotlist(items)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"command line: {_one_line(exc)}") from None
    except yaml.YAMLError:
        for item in items:  # name the override whose value is no YAML
            try:
                OmegaConf.from_dotlist([item])
            except yaml.YAMLError as exc:
                raise ConfigError(f"command line: override '{item}': the value is not valid YAML "
                                  f"({_one_line(exc)})") from None
        raise


def _section(cfg: DictConfig | None, key: str) -> DictConfig:
    if cfg is None or key not in cfg or cfg[key] is None:
        return OmegaConf.create({})
    value = cfg[key]
    if not isinstance(value, DictConfig):
        raise ConfigError(f"'{key}' must be a mapping, got {type(value).__name__}")
    return value


def component_yaml(obj: Any, rel: str) -> Path:
    """Resolve a component's default YAML: relative to ``configs/`` beside its module."""
    path = Path(rel)
    if path.is_absolute():
        return path
    return Path(inspect.getfile(obj)).resolve().parent / "configs" / path


_STRUCTURED: dict[type, DictConfig] = {}


def _structured(schema: type | None, source: str) -> DictConfig:
    """A fresh ``OmegaConf.structured(schema)`` (copied from a cache: building one from a
    dataclass costs several times a copy, and a config build makes a dozen)."""
    if schema is None:
        return OmegaConf.create({})
    if not dataclasses.is_dataclass(schema):
        raise ConfigError(f"{source}: registered config {schema!r} is not a dataclass")
    if schema not in _STRUCTURED:
        _STRUCTURED[schema] = OmegaConf.structured(schema)
    return copy.deepcopy(_STRUCTURED[schema])


# -- model --------------------------------------------------------------------------------
def model_types(arch: str) -> dict[str, Path]:
    """Model type name -> default YAML path for ``arch``."""
    cls = MODELS.get(arch)
    return {t: component_yaml(cls, p) for t, p in getattr(cls, "MODEL_TYPES", {}).items()}


def _type_yaml(arch: str, model_type: str | None, source: str = "") -> tuple[str | None, DictConfig, str]:
    cls = MODELS.get(arch)
    types = model_types(arch)
    model_type = model_type or getattr(cls, "DEFAULT_MODEL_TYPE", None)
    if model_type is None:
        return None, OmegaConf.create({}), "defaults"
    if model_type not in types:
        raise ConfigError(
            f"{source + ': ' if source else ''}"
            f"unknown model_type '{model_type}' for model '{arch}'.{did_you_mean(model_type, types)} "
            f"Known types: {', '.join(sorted(types)) or '(none)'}"
        )
    return model_type, read_yaml(types[model_type]), str(types[model_type])


def _part_block(key: str, layers: list[tuple[DictConfig, str]]) -> DictConfig | None:
    """Type an ``image_encoder`` / ``llm`` block against its registry entry's schema.

    A layer that names another entry starts that entry's block afresh: the earlier
    layers' keys were meant for the entry they named. Their weights are not silently lost
    with them (see :func:`_carried_weights`).
    """
    registry = PART_REGISTRIES[key]
    typed, name = None, None
    for layer, source in layers:
        if key not in layer or layer[key] is None:
            continue
        block = layer[key]
        if not isinstance(block, DictConfig):
            raise ConfigError(f"{source}: model.{key} must be a mapping with a 'name' ({registry.kind} name)")
        if "name" in block and block.name != name:
            name = str(block.name)
            if name not in registry:
                raise ConfigError(f"{source}: model.{key}.name: {registry.unknown(name)}")
            carried = _carried_weights(key, typed, block, source)
            typed = _structured(registry.get_config(name), f"model.{key}")
            if carried is not None:
                typed[PART_WEIGHTS[key]] = carried
        if typed is None:
            raise ConfigError(f"{source}: model.{key} has no 'name' ({registry.kind} name) to pick the component")
        typed = merge_layer(typed, block, source, f"model.{key}")
    return typed


def _carried_weights(key: str, earlier: DictConfig | None, block: DictConfig, source: str) -> str | None:
    """What a part block that names another entry keeps of the earlier entry's weights.

    ``pretrained: default`` (each encoder's published weights) carries over to an entry
    that has published weights. Any other weight source was meant for the earlier entry:
    rather than build the new one randomly initialised, say so.
    """
    wkey = PART_WEIGHTS[key]
    before = OmegaConf.to_container(earlier, resolve=False).get(wkey) if earlier is not None else None
    if not before or wkey in block:
        return None
    new_name = str(block.name)
    if before == "default" and getattr(PART_REGISTRIES[key].get(new_name), "DEFAULT_PRETRAINED", ""):
        return "default"
    raise ConfigError(
        f"{source}: model.{key}.name '{new_name}' replaces '{earlier.name}' but not its {wkey} '{before}' "
        f"(meant for '{earlier.name}'): set model.{key}.{wkey} as well ('' builds it with random weights)"
    )


def model_config(
    arch: str, model_type: str | None = None, overrides: Any = None, source: str = "overrides"
) -> DictConfig:
    """The merged ``model`` section: schema <- type YAML <- ``overrides``.

    Args:
        arch: MODELS name, e.g. ``"blip2_opt"``.
        model_type: one of the model's types; ``None`` picks its default.
        overrides: dict / DictConfig / dotlist merged last (nested dicts allowed).
        source: how errors name the overrides.
    """
    return _model_section(arch, model_type, [(_as_cfg(overrides), source)])


def _as_cfg(obj: Any) -> DictConfig:
    if obj is None:
        return OmegaConf.create({})
    if isinstance(obj, DictConfig):
        return obj
    if isinstance(obj, (list, tuple, ListConfig)):
        return parse_overrides(list(obj))
    return OmegaConf.create(obj)


def _model_section(arch: str, model_type: str | None, user_layers: list[tuple[DictConfig, str]],
                   type_source: str = "") -> DictConfig:
    schema = MODELS.get_config(arch) or ModelConfig
    model_type, type_cfg, type_src = _type_yaml(arch, model_type, type_source)
    base = _structured(schema, f"model '{arch}'")
    layers = [(base, f"model '{arch}' schema"), (_section(type_cfg, "model"), type_src)] + user_layers
    merged = _strip(base, PART_REGISTRIES)
    OmegaConf.set_struct(merged, True)  # masked_copy drops the flag: unknown model keys must fail
    for layer, source in layers[1:]:
        merged = merge_layer(merged, _strip(layer, PART_REGISTRIES), source, "model")
    OmegaConf.set_struct(merged, False)
    for key in PART_REGISTRIES:
        block = _part_block(key, layers)
        if block is not None:
            merged[key] = block
    merged.arch = arch
    merged.model_type = model_type
    OmegaConf.set_struct(merged, True)
    return merged


def preprocess_config(arch: str, model_type: str | None = None, overrides: Any = None) -> DictConfig:
    """The ``preprocess`` block of a model type (processor names and options)."""
    _, type_cfg, type_src = _type_yaml(arch, model_type)
    merged = _structured(PreprocessConfig, "preprocess")
    merged = merge_layer(merged, _section(type_cfg, "preprocess"), type_src, "preprocess")
    return merge_layer(merged, _as_cfg(overrides), "overrides", "preprocess")


# -- datasets ----------------------------------------------------------------------------
def dataset_config(name: str, user_block: Any = None, source: str = "overrides") -> DictConfig:
    """One ``datasets.<name>`` block: schema <- builder default YAML <- user block."""
    if name not in DATASETS:
        raise ConfigError(f"{source}: datasets.{name}: {DATASETS.unknown(name)}")
    builder = DATASETS.get(name)
    merged = _structured(DATASETS.get_config(name), f"dataset '{name}'")
    user = _as_cfg(user_block)
    defaults = getattr(builder, "DEFAULT_CONFIGS", {})
    kind = str(user.get("type", "default")) if len(user) else "default"
    if defaults:
        if kind not in defaults:
            raise ConfigError(
                f"{source}: datasets.{name}.type '{kind}' is unknown.{did_you_mean(kind, defaults)} "
                f"Known: {', '.join(defaults)}"
            )
        path = component_yaml(builder, defaults[kind])
        default_cfg = read_yaml(path)
        block = _section(_section(default_cfg, "datasets"), name) if "datasets" in default_cfg else default_cfg
        merged = merge_layer(merged, block, str(path), f"datasets.{name}")
    return merge_layer(merged, user, source, f"datasets.{name}")


# -- run -----------------------------------------------------------------------------------
def run_schema(task: str, runner: str, lr_sched: str | None) -> type:
    """RunConfig plus the keys of the chosen task, runner and lr scheduler (one class per
    combination of their schemas)."""
    key = tuple(r.get_config(n) if n is not None else None
                for r, n in ((TASKS, task), (RUNNERS, runner), (LR_SCHEDULERS, lr_sched)))
    if key not in _RUN_SCHEMAS:
        _RUN_SCHEMAS[key] = _make_run_schema(task, runner, lr_sched)
    return _RUN_SCHEMAS[key]


_RUN_SCHEMAS: dict[tuple, type] = {}


def _make_run_schema(task: str, runner: str, lr_sched: str | None) -> type:
    fields: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(RunConfig)}
    extra = []
    for registry, name in ((TASKS, task), (RUNNERS, runner), (LR_SCHEDULERS, lr_sched)):
        if name is None:
            continue
        schema = registry.get_config(name)
        # resolved types: a module with `from __future__ import annotations` stores strings
        hints = typing.get_type_hints(schema) if schema else {}
        for f in dataclasses.fields(schema) if schema else ():
            if f.name in fields or f.name == "name":
                continue
            fields[f.name] = f
            kw = {}
            if f.default is not dataclasses.MISSING:
                kw["default"] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                kw["default_factory"] = f.default_factory
            extra.append((f.name, hints.get(f.name, f.type), dataclasses.field(**kw)))
    return dataclasses.make_dataclass("RunConfig", extra, bases=(RunConfig,))


def _run_section(layers: list[tuple[DictConfig, str]]) -> DictConfig:
    probe = _structured(RunConfig, "run")
    sources = {"task": "run schema default", "runner": "run schema default", "lr_sched": "run schema default"}
    for layer, source in layers:
        for key in sources:
            if key in layer:
                probe[key], sources[key] = layer[key], source
    for key, registry in (("task", TASKS), ("runner", RUNNERS), ("lr_sched", LR_SCHEDULERS)):
        name = probe[key]
        if name is not None and name not in registry:
            raise ConfigError(f"{sources[key]}: run.{key}: {registry.unknown(name)}")
    merged = _structured(run_schema(probe.task, probe.runner, probe.lr_sched), "run")
    for layer, source in layers:
        merged = merge_layer(merged, layer, source, "run")
    return merged


# -- the whole config ------------------------------------------------------------------------
def _check_top_level(cfg: DictConfig, source: str) -> None:
    for key in cfg:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(
                f"{source}: unknown top-level key '{key}'.{did_you_mean(str(key), TOP_LEVEL_KEYS)} "
                f"Valid: {', '.join(TOP_LEVEL_KEYS)}"
            )


def _imports(layers: Iterable[tuple[DictConfig, str]]) -> list[str]:
    names = []
    for layer, source in layers:
        for spec in layer.get("imports", None) or []:
            import_strict(str(spec), source)
            names.append(str(spec))
    return names


def load_config(cfg_path: str | Path | None, overrides: Sequence[str] | None = None) -> DictConfig:
    """Build the full config (``run``, ``model``, ``datasets``, ``imports``).

    Args:
        cfg_path: experiment YAML (``projects/...``), or None for overrides only.
        overrides: ``a.b=c`` strings; a literal ``--options`` among them is ignored.
    """
    exp = read_yaml(cfg_path) if cfg_path else OmegaConf.create({})
    cli = parse_overrides(overrides)
    layers = [(exp, str(cfg_path)), (cli, "command line")]
    for layer, source in layers:
        _check_top_level(layer, source)
    imports = _imports(layers)

    run = _run_section([(_section(layer, "run"), source) for layer, source in layers])

    model = _model_from_layers([(_section(layer, "model"), source) for layer, source in layers])
    arch = None if model is None else model.arch

    datasets = {}
    ds_layers = [(_section(layer, "datasets"), source) for layer, source in layers]
    names = list(dict.fromkeys(str(n) for d, _ in ds_layers for n in d))
    for name in names:
        block = None
        for d, source in ds_layers:
            if name in d:
                if block is None:
                    block = dataset_config(name, d[name], source)
                else:
                    block = merge_layer(block, d[name], source, f"datasets.{name}")
        datasets[name] = block

    out = OmegaConf.create({"run": run, "datasets": datasets, "imports": imports})
    out.model = model
    if arch is not None:
        prep_layers = [_section(layer, "preprocess") for layer, _ in layers]
        prep = preprocess_config(arch, model.model_type)
        for layer, (_, source) in zip(prep_layers, layers):
            prep = merge_layer(prep, layer, source, "preprocess")
        out.preprocess = prep
    return out


def _model_from_layers(layers: list[tuple[DictConfig, str]]) -> DictConfig | None:
    """The model section from the experiment's and the command line's ``model:`` layers.

    A command line that switches ``model_type`` or ``arch`` re-bases the experiment's
    layer onto the new type first (:mod:`lavislike.config.type_switch`); a new ``arch``
    without a ``model_type`` takes that model's default type.
    """
    (exp, exp_src), (cli, cli_src) = layers
    arch, arch_src = next(((str(m.arch), s) for m, s in reversed(layers) if "arch" in m), (None, None))
    if arch is None:
        return None
    if arch not in MODELS:
        raise ConfigError(f"{arch_src}: model.arch: {MODELS.unknown(arch)}")
    exp_arch, exp_type = exp.get("arch"), exp.get("model_type") or None
    model_type, type_src = cli.get("model_type") or None, cli_src
    if model_type is None and arch == exp_arch:
        model_type, type_src = exp_type, exp_src
    user = [(_strip(m, ("arch", "model_type")), s) for m, s in layers]
    if exp_arch is not None and len(user[0][0]) and (arch, model_type) != (exp_arch, exp_type):
        old = _type_defaults(str(exp_arch), exp_type, exp_src)
        new = _type_defaults(arch, model_type, type_src)
        if (arch, new.model_type) != (exp_arch, old.model_type):
            switch = f"model.model_type {old.model_type} -> {new.model_type}"
            if arch != exp_arch:
                switch = f"model.arch {exp_arch} -> {arch}, {switch}"
            user[0] = (rebase_experiment(user[0][0], old, new, exp_src, switch), exp_src)
    return _model_section(arch, model_type, user, type_src)


_DEFAULTS_CACHE: dict[tuple, DictConfig] = {}


def _type_defaults(arch: str, model_type: str | None, source: str) -> DictConfig:
    """The model section of a type with no user layer (read-only; cached per type file)."""
    path = model_types(arch).get(model_type or getattr(MODELS.get(arch), "DEFAULT_MODEL_TYPE", None))
    stamp = (path, path.stat().st_mtime_ns) if path is not None and path.is_file() else (path, None)
    key = (arch, model_type, MODELS.get(arch), MODELS.get_config(arch), *stamp)
    if key not in _DEFAULTS_CACHE:
        _DEFAULTS_CACHE[key] = _model_section(arch, model_type, [], source)
    return _DEFAULTS_CACHE[key]


def _strip(cfg: DictConfig, keys: Sequence[str]) -> DictConfig:
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k not in keys]) if len(cfg) else cfg


def save_config(cfg: DictConfig, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the fully resolved config into a run's output folder (atomically)."""
    from lavislike.common.io import write_text_atomic

    path = Path(out_dir) / name
    write_text_atomic(path, OmegaConf.to_yaml(cfg, resolve=True))
    return path


def to_container(cfg: DictConfig) -> dict:
    """Resolved plain-dict view (for JSON metadata next to checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)
