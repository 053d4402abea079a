"""What each tab of the app computes, callable from Python (the page only calls these).

Example:
    >>> session = ServeSession(load_served())
    >>> session.caption("cat.jpg", method="beam", num_captions=2)
    ['a cat on a sofa', 'a cat lying on a couch']
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from lavislike.errors import LavislikeError
from lavislike.serve.images import MAX_UPLOAD_MB, UploadError, read_image
from lavislike.serve.models import Served, pick
from lavislike.serve.search import ImageSearch

CAPTION_METHODS = ("beam", "nucleus")
VQA_METHODS = ("generate", "rank")


class Unsupported(LavislikeError):
    """The served models cannot do what a tab asks (e.g. VQA with a stage-1 model)."""


class ServeSession:
    """The served models and what the app does with them.

    Args:
        served: loaded models; each tab uses the first one able to do its job.
        image_folder: the folder the search tab ranks (None: search is off).
        max_upload_mb: larger uploads are refused with a message.
    """

    def __init__(self, served: Sequence[Served], image_folder: Optional[str | Path] = None,
                 max_upload_mb: float = MAX_UPLOAD_MB):
        self.served = list(served)
        self.captioner = pick(self.served, "caption")
        self.answerer = pick(self.served, "answer")
        self.matcher = pick(self.served, "match")
        self.image_folder = None if image_folder is None else Path(image_folder)
        self.max_upload_mb = max_upload_mb
        self.searcher = ImageSearch(self.matcher) if self.matcher is not None else None

    def _need(self, served: Optional[Served], what: str) -> Served:
        if served is None:
            names = ", ".join(s.label for s in self.served)
            raise Unsupported(f"{what} needs a model that can do it; serving only {names}")
        return served

    def _image(self, served: Served, image) -> torch.Tensor:
        pixels = served.vis(read_image(image, self.max_upload_mb))
        return pixels.unsqueeze(0).to(served.model.device)

    def caption(self, image, method: str = "beam", num_captions: int = 1, num_beams: int = 3,
                max_length: int = 30, min_length: int = 1, top_p: float = 0.9) -> list[str]:
        """``num_captions`` captions by beam search or nucleus sampling."""
        served = self._need(self.captioner, "captioning")
        if method not in CAPTION_METHODS:
            raise UploadError(f"caption method '{method}' is not one of {', '.join(CAPTION_METHODS)}")
        num_captions = int(num_captions)
        return served.model.generate(
            {"image": self._image(served, image)}, use_nucleus_sampling=method == "nucleus",
            num_beams=max(int(num_beams), num_captions), max_length=int(max_length),
            min_length=int(min_length), top_p=float(top_p), num_captions=num_captions,
        )

    def answer(self, image, question: str, method: str = "generate", answers: str | Sequence[str] = "",
               num_beams: int = 3, max_length: int = 10) -> str:
        """The answer to ``question``: generated, or the likeliest of ``answers`` (``rank``;
        a comma- or newline-separated string or a list)."""
        served = self._need(self.answerer, "VQA")
        if not str(question).strip():
            raise UploadError("type a question")
        if method not in VQA_METHODS:
            raise UploadError(f"VQA method '{method}' is not one of {', '.join(VQA_METHODS)}")
        candidates = parse_answers(answers)
        if method == "rank" and not candidates:
            raise UploadError("ranking needs a list of candidate answers (comma- or newline-separated)")
        return served.model.predict_answers(
            {"image": self._image(served, image), "text_input": [question]}, num_beams=int(num_beams),
            inference_method=method, max_len=int(max_length), answer_list=candidates or None,
        )[0]

    @torch.inference_mode()
    def match(self, image, text: str) -> dict[str, float]:
        """``{"itm": P(match) from the ITM head, "itc": the ITC cosine similarity}``."""
        served = self._need(self.matcher, "image-text matching")
        if not str(text).strip():
            raise UploadError("type a text to match")
        model = served.model
        image_out = model.retrieval_image_embeds(self._image(served, image))
        text_out = model.retrieval_text_embeds([served.txt(text)])
        itm = model.itm_logits(image_out["embeds"], text_out["input_ids"], text_out["attention_mask"])
        itc = model.itc_similarity(image_out["feat"], text_out["feat"])
        return {"itm": float(itm.float().softmax(-1)[0, 1]), "itc": float(itc[0, 0])}

    def search(self, query: str, top_k: int = 8) -> list[tuple[Path, float]]:
        """The served folder's ``top_k`` images for ``query`` (features cached per folder)."""
        if self.image_folder is None:
            raise Unsupported("search is off: start the server with --image-folder DIR")
        self._need(self.matcher, "search")
        return self.searcher.search(query, self.image_folder, int(top_k))


def parse_answers(answers: str | Sequence[str]) -> list[str]:
    items = answers.replace("\n", ",").split(",") if isinstance(answers, str) else list(answers)
    return [a.strip() for a in items if a and a.strip()]
