"""The Gradio page over a :class:`~lavislike.serve.actions.ServeSession` (the ``web`` extra).

Every handler turns a :class:`~lavislike.errors.LavislikeError` (a non-image upload, a
file over the limit, a tab the model cannot serve) into a message shown in the page, so
one bad request never stops the server.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

from lavislike.errors import LavislikeError
from lavislike.serve.actions import CAPTION_METHODS, VQA_METHODS, ServeSession
from lavislike.serve.images import read_image

ERROR_PREFIX = "Error: "


def shown(fn: Callable, failed=lambda text: text) -> Callable:
    """``fn`` with errors returned as ``failed(message)`` (what the page displays)."""

    @functools.wraps(fn)
    def run(*args):
        try:
            return fn(*args)
        except LavislikeError as exc:
            return failed(ERROR_PREFIX + str(exc))
        except FileNotFoundError as exc:  # an upload gone from Gradio's temp folder
            return failed(f"{ERROR_PREFIX}{exc.filename}: no longer there; upload it again")

    return run


def _captions(session: ServeSession, image, method, n, beams, max_length):
    return "\n".join(session.caption(image, method, int(n), int(beams), int(max_length)))


def _matching(session: ServeSession, image, text):
    scores = session.match(image, text)
    return f"ITM match probability: {scores['itm']:.4f}\nITC similarity: {scores['itc']:.4f}"


def _search(session: ServeSession, query, top_k):
    hits = session.search(query, int(top_k))
    root = session.image_folder.expanduser().resolve()
    return [(str(path), f"{score:.3f} {path.relative_to(root)}") for path, score in hits], ""


def _preview(path):
    """The upload itself when it is a readable image (the preview), else nothing."""
    try:
        read_image(path)
        return path
    except LavislikeError:
        return None


def image_input(tab: str):
    """An upload box (``#<tab>-image``) and its preview (``#<tab>-preview``).

    A file box rather than ``gr.Image``: Gradio's image box decodes uploads itself and
    answers a non-image with a bare "Error"; here the tab's handler reads the file and
    says what is wrong with it.
    """
    import gradio as gr

    with gr.Row():
        upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id=f"{tab}-image")
        preview = gr.Image(label="Preview", interactive=False, elem_id=f"{tab}-preview", height=240)
    upload.change(_preview, upload, preview)
    return upload


def build_app(session: ServeSession):
    """The ``gr.Blocks`` app: one tab per job; element ids ``<tab>-<part>`` for tests."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home, offline or not
    import gradio as gr

    served = ", ".join(s.label for s in session.served)
    with gr.Blocks(title="lavislike", analytics_enabled=False) as app:
        gr.Markdown(f"## lavislike\nServing {served}.")
        with gr.Tab("Captioning", id="caption"):
            image = image_input("caption")
            method = gr.Radio(list(CAPTION_METHODS), value="beam", label="Decoding", elem_id="caption-method")
            count = gr.Slider(1, 5, value=1, step=1, label="Number of captions", elem_id="caption-count")
            beams = gr.Slider(1, 10, value=3, step=1, label="Beams (beam search)")
            length = gr.Slider(5, 60, value=30, step=1, label="Maximum length (tokens)")
            out = gr.Textbox(label="Captions", lines=3, elem_id="caption-output")
            gr.Button("Caption", elem_id="caption-run").click(
                shown(functools.partial(_captions, session)), [image, method, count, beams, length], out)
        with gr.Tab("Visual question answering", id="vqa"):
            image = image_input("vqa")
            question = gr.Textbox(label="Question", elem_id="vqa-question")
            method = gr.Radio(list(VQA_METHODS), value="generate", label="Answer by", elem_id="vqa-method")
            answers = gr.Textbox(label="Candidate answers (for rank; comma-separated)", elem_id="vqa-answers")
            out = gr.Textbox(label="Answer", elem_id="vqa-output")
            gr.Button("Answer", elem_id="vqa-run").click(
                shown(session.answer), [image, question, method, answers], out)
        with gr.Tab("Image-text matching", id="match"):
            image = image_input("match")
            text = gr.Textbox(label="Text", elem_id="match-text")
            out = gr.Textbox(label="Scores", lines=2, elem_id="match-output")
            gr.Button("Score", elem_id="match-run").click(
                shown(functools.partial(_matching, session)), [image, text], out)
        with gr.Tab("Text-to-image search", id="search"):
            folder = session.image_folder or "(none: start with --image-folder DIR)"
            gr.Markdown(f"Searching {folder} (image features are computed on the first search, then cached).")
            query = gr.Textbox(label="Text", elem_id="search-query")
            top_k = gr.Slider(1, 32, value=8, step=1, label="Results")
            gallery = gr.Gallery(label="Best matches", columns=4, elem_id="search-gallery")
            status = gr.Textbox(label="Status", elem_id="search-status")
            gr.Button("Search", elem_id="search-run").click(
                shown(functools.partial(_search, session), failed=lambda text: ([], text)),
                [query, top_k], [gallery, status])
    return app


def launch(app, host: str = "127.0.0.1", port: int = 7860, session: ServeSession | None = None,
           block: bool = True, max_upload_mb: float | None = None):
    """Serve ``app`` on ``host:port`` (loopback unless told otherwise)."""
    folders = [str(session.image_folder)] if session is not None and session.image_folder else []
    limit = max_upload_mb if max_upload_mb is not None else (session.max_upload_mb if session else 20)
    return app.launch(server_name=host, server_port=port, share=False, allowed_paths=folders,
                      max_file_size=f"{limit:g}mb", prevent_thread_lock=not block, quiet=True,
                      show_error=True)
