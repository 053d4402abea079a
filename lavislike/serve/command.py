"""``lavislike serve [--model NAME] [--model-type TYPE] [--checkpoint PATH] [--host H] [--port N]``."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lavislike.errors import LavislikeError

logger = logging.getLogger("lavislike")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="registered model name (default: the demo's trained model)")
    p.add_argument("--model-type", dest="model_type", default=None, help="model type (default: the model's)")
    p.add_argument("--checkpoint", default=None,
                   help="LAVIS .pth, lavislike folder / .safetensors (its config.yaml names the model) or HF folder")
    p.add_argument("--image-folder", dest="image_folder", default=None,
                   help="folder the search tab ranks (default with the demo's model: its corpus images)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--max-upload-mb", dest="max_upload_mb", type=float, default=20.0)


def default_image_folder() -> Path | None:
    """The demo corpus's images, when the demo has made them."""
    from lavislike.common.paths import cache_path

    folder = cache_path("demo", "synthetic", "images")
    return folder if folder.is_dir() else None


def serve_main(args: argparse.Namespace) -> None:
    from importlib.util import find_spec

    from lavislike.serve.models import require_demo_runs

    if args.model is None and args.checkpoint is None:
        require_demo_runs()  # before the slow imports: the usual first mistake, said at once
    if find_spec("gradio") is None:
        raise LavislikeError("lavislike serve needs Gradio: pip install 'lavislike[web]'")

    from lavislike.common.dist import resolve_device
    from lavislike.serve.actions import ServeSession
    from lavislike.serve.app import build_app, launch
    from lavislike.serve.models import load_served

    device = resolve_device(args.device, "--device")
    served = load_served(args.model, args.model_type, args.checkpoint, device)
    folder = args.image_folder
    if folder is None and args.model is None and args.checkpoint is None:
        folder = default_image_folder()
    if folder is not None and not Path(folder).is_dir():
        raise LavislikeError(f"--image-folder {folder}: not a folder")
    session = ServeSession(served, folder, args.max_upload_mb)
    print(f"lavislike serve: http://{args.host}:{args.port} ({', '.join(s.label for s in served)}); Ctrl+C stops",
          flush=True)
    try:
        launch(build_app(session), args.host, args.port, session)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise LavislikeError(f"--host {args.host} --port {args.port}: {str(exc).splitlines()[0]}") from None
