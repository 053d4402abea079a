"""Building models from the registry and loading their weights (the public API's engine).

* :func:`load_model` - config (schema <- type YAML <- checkpoint's config <- overrides),
  build on the ``meta`` device when weights will be loaded, then read the weights straight
  into the target device and dtype (``load_state_dict(assign=True)``). Random init when
  nothing is loaded (``load_pretrained=False``).
* weight sources: a LAVIS ``.pth`` (file or URL), our format (a folder with
  ``model.safetensors`` + ``config.yaml``, or a ``.safetensors`` file), a Hugging Face
  folder or hub id. Keys are checked against explicit allow-lists.
* :func:`save_pretrained` - our format.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lavislike.common.paths import require_local
from lavislike.config import model_config, preprocess_config
from lavislike.errors import CheckpointError, ConfigError
from lavislike.models.convert.keymap import check_keys, check_shapes
from lavislike.models.convert.lavis_arch import contradictions, fit_to_config, flatten, lavis_arch, preset_mismatch
from lavislike.models.image_encoders.weights import load_weights, read_hf_state, read_safetensors
from lavislike.models.meta_init import params_on_meta
from lavislike.registry import MODELS

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"
PARTIAL_KEY = "lavislike_partial"  # safetensors metadata: only the trainable weights


# -- formats -------------------------------------------------------------------------------
def checkpoint_format(source: str) -> str:
    """``"lavis"``, ``"lavislike"`` or ``"hf"`` for a path, URL or hub id."""
    path = Path(source)
    if source.startswith(("http://", "https://")) or path.suffix in (".pth", ".pt", ".bin"):
        return "lavis"
    if path.suffix == ".safetensors" or (path / WEIGHTS_NAME).is_file() and (path / CONFIG_NAME).is_file():
        return "lavislike"
    if path.is_dir() and (path / "config.json").is_file():
        return "hf"
    if path.exists():
        raise CheckpointError(
            f"checkpoint '{source}': not a LAVIS .pth, a lavislike folder ({WEIGHTS_NAME} + "
            f"{CONFIG_NAME}) or a Hugging Face folder (config.json)"
        )
    if source.count("/") == 1 and not source.startswith((".", "/")):
        return "hf"
    raise CheckpointError(f"checkpoint '{source}' does not exist")


def _lavislike_files(source: str) -> tuple[Path, Optional[Path]]:
    path = Path(source)
    if path.is_dir():
        return path / WEIGHTS_NAME, path / CONFIG_NAME
    config = path.parent / CONFIG_NAME
    return path, config if config.is_file() else None


def _saved_file(source: Optional[str]) -> Optional[DictConfig]:
    """The ``config.yaml`` beside a lavislike checkpoint (a model folder's or a run's), if any."""
    if source is None or checkpoint_format(source) != "lavislike":
        return None
    _, config = _lavislike_files(source)
    if config is None:
        return None
    try:
        saved = OmegaConf.load(config)
    except Exception as exc:  # a YAML error carries a multi-line message
        raise CheckpointError(f"{config}: not a readable config ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(saved, DictConfig):
        raise CheckpointError(f"{config}: not a model config (a mapping with a 'model' block)")
    return saved


def saved_config(source: Optional[str]) -> Optional[DictConfig]:
    """The ``model`` block saved beside a lavislike checkpoint, if any."""
    saved = _saved_file(source)
    if saved is None:
        return None
    return saved.model if "model" in saved else saved


def saved_preprocess(source: Optional[str]) -> Optional[DictConfig]:
    """The ``preprocess`` block saved beside a lavislike checkpoint, if any."""
    saved = _saved_file(source)
    if saved is None or "model" not in saved or not saved.get("preprocess"):
        return None
    return saved.preprocess


def read_state(
    model: nn.Module, source: str, raw: Optional[dict[str, torch.Tensor]] = None
) -> tuple[dict[str, torch.Tensor], str, bool]:
    """Weights of ``source`` converted to ``model``'s keys: ``(state, format, partial)``;
    ``raw``: the LAVIS file's tensors when already read."""
    fmt = checkpoint_format(source)
    if fmt == "lavis":
        return model.convert_lavis_state(raw if raw is not None else load_weights(source), source), fmt, False
    if fmt == "hf":
        return model.convert_hf_state(read_hf_state(source), source), fmt, False
    weights, _ = _lavislike_files(source)
    if not weights.is_file():
        raise CheckpointError(f"checkpoint '{source}': {weights} not found")
    state, meta = read_safetensors(weights)
    # runner-written weights (checkpoints, model_best) are trainable-only and say so by
    # their global_step
    partial = meta.get(PARTIAL_KEY, "1" if "global_step" in meta else "0") == "1"
    from lavislike.models.convert.lavis_llm import drop_unused

    # a stage-1 file initialising a stage-2 model: drop the heads it has no place for
    return drop_unused(state, model.state_dict().keys()), fmt, partial


# -- the architecture a LAVIS file implies -------------------------------------------------
def lavis_layers(name: str, model_type: Optional[str], overrides: dict,
                 raw: dict[str, torch.Tensor], source: str) -> DictConfig:
    """The user's ``overrides`` plus the sizes the LAVIS file's shapes fix (over the type's).

    Raises:
        ConfigError: a size the user set that the file contradicts, or an attention head
            count a new width needs (heads are not in the shapes).
    """
    typed = model_config(name, model_type)
    implied = lavis_arch(raw)
    user = flatten(OmegaConf.to_container(OmegaConf.create(overrides or {}), resolve=True))
    sizes = implied.get("image_encoder", {})
    encoder = user.get("image_encoder.name")
    switch = encoder is None and preset_mismatch(typed, sizes) is not None
    fitted = fit_to_config(implied, typed, "eva_vit" if switch else encoder)
    if switch:
        # the type's fixed-size encoder is not the file's: an eva_vit of the file's sizes
        keep = {k: typed.image_encoder[k] for k in ("precision", "freeze", "pretrained") if k in typed.image_encoder}
        fitted["image_encoder"] = {"name": "eva_vit", **keep, **fitted.get("image_encoder", {})}
        if "image_encoder.heads" not in user:
            raise ConfigError(
                f"{source}: its EVA ViT (width {sizes.get('width')}, depth {sizes.get('depth')}) is not "
                f"{typed.image_encoder.name}'s; set model.image_encoder.heads (attention heads are not "
                "stored in the weights)"
            )
    for key, value in flatten(fitted).items():
        if key in user and user[key] != value and key != "image_encoder.image_size":
            raise ConfigError(
                f"model.{key}={user[key]} contradicts {source}, whose weights imply {key}={value}"
            )
    width = fitted.get("qformer", {}).get("hidden_size")
    if width is not None and width != typed.qformer.hidden_size and "qformer.num_attention_heads" not in user:
        raise ConfigError(
            f"{source}: its Q-Former width is {width}, not {typed.qformer.hidden_size}; set "
            "model.qformer.num_attention_heads (attention heads are not stored in the weights)"
        )
    return OmegaConf.merge(OmegaConf.create(fitted), OmegaConf.create(overrides or {}))


def check_lavis_arch(cfg: DictConfig, raw: dict[str, torch.Tensor], source: str) -> None:
    """Raise naming the first config key the LAVIS file's shapes contradict."""
    found = contradictions(cfg, lavis_arch(raw))
    if found:
        key, current, implied = found[0]
        raise ConfigError(f"{key}={current} does not fit {source}, whose weights imply {implied}")


# -- loading into a meta-built model ------------------------------------------------------
def assign_state(model: nn.Module, state: dict[str, torch.Tensor], device: torch.device) -> set[str]:
    """Load ``state`` into ``model`` in place, each tensor moved once to ``device`` and the
    dtype the model declares; returns the parameter names still on ``meta``."""
    own = model.state_dict(keep_vars=True)
    ready = {}
    for key, value in state.items():
        target = own[key]
        dtype = target.dtype if target.is_floating_point() else value.dtype
        ready[key] = value.to(device=device, dtype=dtype)
    model.load_state_dict(ready, strict=False, assign=True)
    model.tie_weights()  # assign=True replaced the shared tensor on one side only
    return {n for n, p in model.named_parameters() if p.is_meta}


def materialize_(model: nn.Module, missing: set[str], device: torch.device) -> None:
    """Allocate and initialise parameters no checkpoint provided."""
    for name in missing:
        owner_name, _, pname = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        param = getattr(owner, pname)
        if param.is_meta:
            setattr(owner, pname, nn.Parameter(torch.empty_like(param, device=device),
                                               requires_grad=param.requires_grad))
    with torch.no_grad():
        model.init_missing_(missing)


def _load_encoder_pretrained(model: nn.Module, cfg: DictConfig, missing: set[str], device) -> set[str]:
    """Fill a missing image encoder from its own ``pretrained`` source (stage-1 LAVIS files
    may leave the frozen encoder out)."""
    enc_missing = {k for k in missing if k.startswith("image_encoder.")}
    source = str(cfg.image_encoder.get("pretrained") or "")
    if not enc_missing or not source:
        return missing
    enc = model.image_encoder
    dtype = next(enc.parameters()).dtype
    for mod in enc.modules():
        for pname, p in list(mod.named_parameters(recurse=False)):
            if p.is_meta:
                setattr(mod, pname, nn.Parameter(torch.empty_like(p, device=device, dtype=torch.float32),
                                                 requires_grad=p.requires_grad))
    enc.load_pretrained(source)
    enc.to(dtype=dtype)
    return missing - enc_missing


def _check_saved_arch(saved: Optional[DictConfig], name: str, checkpoint: Optional[str]) -> None:
    """A checkpoint saved by another kind of model (a stage-1 folder given to ``blip2_opt``)
    has a config that does not fit ``name``: say how its weights can start that model."""
    arch = saved.get("arch") if saved is not None else None
    if not arch or arch == name or arch not in MODELS.names():
        return
    if MODELS.get_config(arch) is not MODELS.get_config(name):
        raise CheckpointError(
            f"checkpoint='{checkpoint}' holds a '{arch}' model, whose config does not fit '{name}'; "
            f"to start a {name} from its weights (e.g. stage 2 from a stage-1 Q-Former) give it as the "
            f"pretrained weights: load_model('{name}', <model_type>, pretrained='{checkpoint}') "
            f"(in a YAML: model.pretrained)")


def load_model(
    name: str,
    model_type: Optional[str] = None,
    is_eval: bool = False,
    device: str | torch.device = "cpu",
    checkpoint: Optional[str | os.PathLike] = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model and load its weights.

    Args:
        name: MODELS name (``blip2``, ``blip2_opt``, ...).
        model_type: one of the model's types (default: the type saved with ``checkpoint``,
            else the model's default type).
        is_eval: put the model in eval mode.
        device: where the weights go (loaded there directly).
        checkpoint: LAVIS ``.pth`` (path or URL), lavislike folder / ``.safetensors`` or HF
            folder / hub id; replaces the type's ``pretrained`` weights (a trainable-only
            lavislike checkpoint is applied on top of them).
        **overrides: merged into the model config (nested dicts allowed), e.g.
            ``load_pretrained=False`` or ``qformer={"num_hidden_layers": 2}``.

    Example:
        >>> model = load_model("blip2_feature_extractor", "tiny", load_pretrained=False)
    """
    device = torch.device(device)
    checkpoint = None if checkpoint is None else str(checkpoint)
    saved = saved_config(checkpoint)
    _check_saved_arch(saved, name, checkpoint)
    layers = OmegaConf.merge(saved or {}, OmegaConf.create(overrides or {}))
    if saved is not None:
        if model_type is None and saved.get("model_type") in getattr(MODELS.get(name), "MODEL_TYPES", {}):
            # the saved model's own type is the layer under its config, not the default type
            model_type = saved.model_type
        for key in ("arch", "model_type"):
            layers.pop(key, None)
    raw = None
    if (checkpoint is not None and checkpoint_format(checkpoint) == "lavis"
            and (Path(checkpoint).is_file() or checkpoint.startswith(("http://", "https://")))):
        # a LAVIS file has no config: its shapes give the sizes the type YAML does not
        raw = load_weights(checkpoint)
        layers = lavis_layers(name, model_type, overrides, raw, checkpoint)
    cfg = model_config(name, model_type, layers)
    return load_model_from_config(cfg, device, checkpoint=checkpoint, is_eval=is_eval, _raw=raw)


def load_model_from_config(
    cfg: DictConfig,
    device: str | torch.device = "cpu",
    checkpoint: Optional[str | os.PathLike] = None,
    is_eval: bool = False,
    _raw: Optional[dict[str, torch.Tensor]] = None,
) -> nn.Module:
    """Build the model of a merged ``model`` config and load the weights it names.

    What ``lavislike train`` / ``evaluate`` build: ``finetuned`` when ``load_finetuned``,
    else ``pretrained`` (or ``hf_hub_id``) when ``load_pretrained``, else random weights.
    A trainable-only lavislike file (``save_pretrained(trainable_only=True)`` or a
    runner's ``model_best.safetensors`` / ``checkpoints/step_N/model.safetensors``) is
    applied over ``pretrained`` when that is another file; a stage-1 file initialises a
    stage-2 model (its stage-1 heads are dropped).

    Args:
        cfg: from :func:`lavislike.config.model_config` or ``load_config(...).model``.
        device, checkpoint, is_eval: as in :func:`load_model`.
    """
    device = torch.device(device)
    checkpoint = None if checkpoint is None else str(checkpoint)
    sources, key = [], "checkpoint"
    if checkpoint is not None:
        sources.append(checkpoint)
    elif cfg.load_pretrained:
        if cfg.get("load_finetuned") and cfg.get("finetuned"):
            primary, key = cfg.finetuned, "model.finetuned"
        elif cfg.pretrained:
            primary, key = cfg.pretrained, "model.pretrained"
        else:
            primary, key = cfg.hf_hub_id, "model.hf_hub_id"
        if primary:
            sources.append(str(primary))
    if device.type == "meta":
        # a meta model has no memory to load weights into: build the architecture only
        if cfg.get("image_encoder") is not None and cfg.image_encoder.get("pretrained"):
            cfg.image_encoder.pretrained = ""
        sources = []
    raw = None
    if sources:
        require_local(sources[0], key, CheckpointError)
        if checkpoint_format(sources[0]) == "lavis":
            raw = _raw if _raw is not None else load_weights(sources[0])
            check_lavis_arch(cfg, raw, sources[0])  # one line naming the key, not a size mismatch
    model = build_model(cfg, device, meta=bool(sources))
    if sources:
        state, fmt, partial = read_state(model, sources[0], raw)
        base_source = str(cfg.pretrained or cfg.hf_hub_id or "")
        if partial and cfg.load_pretrained and base_source and base_source != sources[0]:
            require_local(base_source, "model.pretrained" if cfg.pretrained else "model.hf_hub_id", CheckpointError)
            base, _, _ = read_state(model, base_source)
            state = {**base, **state}
        follow = getattr(model, "follow_state_layout_", None)
        if follow is not None:
            follow(state)  # e.g. FlanT5's separate LM head: never re-tied over the file
        allow = model.allowed_missing(fmt, state)
        if partial:
            allow = allow + (r".*",)
        if cfg.get("image_encoder") is not None and cfg.image_encoder.get("pretrained"):
            allow = allow + (r"image_encoder\..*",)  # read from the encoder's own source below
        expected = model.state_dict()
        check_keys(sources[0], expected.keys(), state, allow_missing=allow)
        check_shapes(sources[0], expected, state)
        still_meta = assign_state(model, state, device)
        still_meta = _load_encoder_pretrained(model, cfg, still_meta, device)
        if still_meta:
            logger.info("%s: initialised %d parameters it does not hold: %s", sources[0],
                        len(still_meta), _by_part(still_meta))
            materialize_(model, still_meta, device)
        model.tie_weights()
    model.to(device)
    return model.eval() if is_eval else model.train()


def _by_part(names: set[str]) -> str:
    """``llm.* (36), llm_proj.* (2)``: parameter names counted by the model part they are in."""
    parts: dict[str, int] = {}
    for name in sorted(names):
        part = name.split(".", 1)[0]
        parts[part] = parts.get(part, 0) + 1
    return ", ".join(f"{part}.* ({n})" if part not in names else part for part, n in parts.items())


def build_model(cfg: DictConfig, device: torch.device, meta: bool = False) -> nn.Module:
    """The registered class of ``cfg.arch`` built from ``cfg``; parameters on ``meta`` or
    randomly initialised on ``device``."""
    cls = MODELS.get(cfg.arch)
    if not meta:
        with torch.device(device):
            return cls.from_config(cfg)
    enc = cfg.get("image_encoder")
    encoder_source = enc.get("pretrained", "") if enc is not None else ""
    if encoder_source:
        # the encoder's own weights are read after the checkpoint, and only if it lacks them
        cfg.image_encoder.pretrained = ""
    try:
        # the device context lets parts read for real (the frozen LLM) land on ``device``
        with params_on_meta(), torch.device(device):
            model = cls.from_config(cfg)
    finally:
        if encoder_source:
            cfg.image_encoder.pretrained = encoder_source
    return model


def pretrained_state(model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The weights :func:`save_pretrained` writes: each parameter once and the persistent
    buffers (or ``trainable_state_dict()``), without the frozen parts read from their own source."""
    state = model.trainable_state_dict() if trainable_only else _dedup(model)
    external = tuple(getattr(model, "external_weight_prefixes", tuple)())
    if external:
        # a frozen LLM is re-read from llm.path: saving it would copy billions of weights
        state = {k: v for k, v in state.items() if not k.startswith(external)}
    return state


def save_pretrained(model: nn.Module, folder: str | os.PathLike, trainable_only: bool = False,
                    preprocess: Optional[DictConfig | dict] = None,
                    state: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Write ``model.safetensors`` + ``config.yaml`` (the resolved model config and the
    processors, which :func:`load_model_and_preprocess` then builds).

    Parameters under ``model.external_weight_prefixes()`` (frozen parts the config reads
    from their own source) are not written.

    Args:
        trainable_only: save ``trainable_state_dict()``; loading then starts from the
            type's pretrained weights.
        preprocess: the processors block (``vis_processor`` / ``text_processor``, each
            ``train`` / ``eval``) the model was trained with; default: the model type's,
            the image size the model's.
        state: :func:`pretrained_state` made whole where it is not (FSDP shards the
            trainable blocks: every rank gathers, one saves); default: the model's own.
    """
    from lavislike.common.checkpoint import save_weights
    from lavislike.common.io import write_text_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if state is None:
        state = pretrained_state(model, trainable_only)
    save_weights(folder / WEIGHTS_NAME, state, metadata={PARTIAL_KEY: "1" if trainable_only else "0"})
    if preprocess is None:
        preprocess = model_preprocess(model.cfg)
    if isinstance(preprocess, DictConfig):  # a run config's node: its ${...} resolved there
        preprocess = OmegaConf.to_container(preprocess, resolve=True)
    saved = OmegaConf.create({"model": model.cfg, "preprocess": preprocess})
    write_text_atomic(folder / CONFIG_NAME, OmegaConf.to_yaml(saved))


def _dedup(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters once each (tied ones under their first name) and persistent buffers."""
    state = dict(model.state_dict())
    named = dict(model.named_parameters())  # deduplicated
    for name in [n for n, _ in model.named_parameters(remove_duplicate=False)]:
        if name not in named:
            state.pop(name, None)
    return state


def load_preprocess(config: DictConfig) -> tuple[dict, dict]:
    """``(vis_processors, txt_processors)`` with ``"train"`` / ``"eval"`` entries."""
    from lavislike.processors import build_processor

    def pair(block, kind: str) -> dict:
        return {
            split: build_processor(block.get(split), f"preprocess.{kind}.{split}")
            for split in ("train", "eval")
        }

    return pair(config.vis_processor, "vis_processor"), pair(config.text_processor, "text_processor")


def overlay_processors(base: DictConfig, top: Optional[DictConfig | dict]) -> DictConfig:
    """``base`` (a ``preprocess`` block) with each processor ``top`` names put in its place
    whole (another processor's keys must not mix in)."""
    for kind in ("vis_processor", "text_processor"):
        for split in ("train", "eval"):
            block = (top or {}).get(kind, {}).get(split)
            if block is not None:
                base[kind][split] = block
    return base


def model_preprocess(cfg: DictConfig, checkpoint: Optional[str | os.PathLike] = None) -> DictConfig:
    """The processors block of the model ``cfg`` describes: the one saved beside
    ``checkpoint`` (its ``config.yaml``: a model folder's or a run's), each processor the
    config lacks from the model type; the image size follows the model (a checkpoint's or
    an override's)."""
    config = overlay_processors(preprocess_config(cfg.arch, cfg.model_type),
                                saved_preprocess(None if checkpoint is None else str(checkpoint)))
    size = cfg.get("image_encoder", {}).get("image_size")
    if size is not None:
        for split in ("train", "eval"):
            block = config.vis_processor.get(split)
            if block is not None and "image_size" in block:
                block.image_size = size
    return config


def load_model_and_preprocess(
    name: str,
    model_type: Optional[str] = None,
    is_eval: bool = False,
    device: str | torch.device = "cpu",
    checkpoint: Optional[str | os.PathLike] = None,
    **overrides: Any,
) -> tuple[nn.Module, dict, dict]:
    """``(model, vis_processors, txt_processors)``; see :func:`load_model` for the args.

    The processors are the ones saved with ``checkpoint`` (:func:`model_preprocess`),
    else the model type's, the image size the model's.
    """
    model = load_model(name, model_type, is_eval, device, checkpoint, **overrides)
    vis, txt = load_preprocess(model_preprocess(model.cfg, checkpoint))
    return model, vis, txt
