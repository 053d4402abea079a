"""``lavislike serve``: a web app over a trained model (captioning, VQA, matching, search).

The parts, each usable without a browser:

* :mod:`~lavislike.serve.images` - reading an upload, refusing non-images and huge files;
* :mod:`~lavislike.serve.models` - which model(s) to serve: the command-line choice, or the
  demo's trained runs by default;
* :mod:`~lavislike.serve.actions` - what each tab computes (:class:`ServeSession`);
* :mod:`~lavislike.serve.search` - the text-to-image index over a folder (built once);
* :mod:`~lavislike.serve.app` - the Gradio page over a session (needs the ``web`` extra).
"""
