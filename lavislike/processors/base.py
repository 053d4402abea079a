"""What every processor shares: the config-block -> instance step and the CLIP statistics.

A processor is a callable registered in ``PROCESSORS`` with a config dataclass; its YAML
block names it (``{name: blip_image_eval, image_size: 224}``). Image processors map a PIL
image to a float tensor (3, H, W); text processors map a string to a string (or, with the
prefix-LM option, to ``{"text_input", "text_output"}``); video processors map a video
file path to a float tensor (T, 3, H, W).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lavislike.common.suggest import did_you_mean
from lavislike.errors import ConfigError
from lavislike.registry import PROCESSORS

# OpenAI CLIP's normalisation, used by every BLIP-2 reference checkpoint.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def processor_config(block: Any, source: str = "processor") -> DictConfig:
    """Validate a processor block against its registered dataclass.

    Args:
        block: mapping with ``name`` and the processor's options.
        source: how errors name the block (e.g. ``"datasets.coco_caption.vis_processor.train"``).

    Returns:
        The block merged over the dataclass defaults (read-only keys, typed values).
    """
    block = OmegaConf.create(block) if not isinstance(block, DictConfig) else block
    name = block.get("name")
    if not name:
        raise ConfigError(f"{source}: a processor block needs a 'name'; known: {', '.join(PROCESSORS.names())}")
    if name not in PROCESSORS:
        raise ConfigError(f"{source}: {PROCESSORS.unknown(name)}")
    schema = PROCESSORS.get_config(name)
    if schema is None:
        return block
    base = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(base, block)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "key", None) or getattr(exc, "full_key", "")
        fields = [f.name for f in dataclasses.fields(schema)]
        raise ConfigError(
            f"{source}: bad key '{key}' for processor '{name}'.{did_you_mean(str(key), fields)} "
            f"Valid keys: {', '.join(fields)}"
        ) from None
    return merged


def build_processor(block: Any, source: str = "processor") -> Callable | None:
    """The processor a YAML block describes (None for a missing block).

    Example:
        >>> proc = build_processor({"name": "blip_image_eval", "image_size": 224})
    """
    if block is None:
        return None
    cfg = processor_config(block, source)
    return PROCESSORS.get(cfg.name).from_config(cfg)
