"""``lavislike convert SRC DST [--arch A --model-type T] [--to lavislike|hf]``."""
from __future__ import annotations

import argparse
import logging

from lavislike.errors import ConfigError

logger = logging.getLogger(__name__)


def convert_main(args: argparse.Namespace) -> None:
    """Read ``args.src`` (LAVIS .pth, lavislike folder, HF folder / hub id), write ``args.dst``.

    A LAVIS .pth needs ``--arch`` (and ``--model-type`` unless the default type fits); a
    lavislike folder carries its config; an HF folder builds ``blip2_image_text_matching``
    unless ``--arch`` names another model.
    """
    from lavislike.models.convert.from_hf import from_hf
    from lavislike.models.loading import checkpoint_format, load_model, saved_config

    fmt = checkpoint_format(args.src)
    arch = getattr(args, "arch", None)
    model_type = getattr(args, "model_type", None)
    if fmt == "hf" and arch in (None, "blip2_image_text_matching"):
        model = from_hf(args.src)
    else:
        if arch is None and fmt == "lavislike":
            saved = saved_config(args.src)
            arch = saved.get("arch") if saved is not None else None
            model_type = model_type or (saved.get("model_type") if saved is not None else None)
        if arch is None:
            raise ConfigError(f"convert: '{args.src}' is a {fmt} checkpoint; give --arch (and --model-type)")
        model = load_model(arch, model_type, is_eval=True, checkpoint=args.src)
    if getattr(args, "to", "lavislike") == "hf":
        model.save_hf(args.dst)
    else:
        model.save_pretrained(args.dst)
    logger.info("wrote %s (%s)", args.dst, getattr(args, "to", "lavislike"))
