"""Text processors: BLIP caption / question cleaning and the T5 prefix-LM split.

``blip_caption`` follows the reference exactly: lower-case; replace each of
``. ! " ( ) * # : ; ~`` by a space; collapse runs of whitespace to one space; strip;
keep the first ``max_words`` words; prepend ``prompt``. ``blip_question`` deletes
those characters instead of replacing them, strips trailing spaces and truncates.

The prefix-LM option (``prefix_lm: true``) serves stage-2 pre-training of encoder-decoder
LLMs (FlanT5) from plain captions: the cleaned caption is cut at a random word boundary
``k`` drawn uniformly from ``1 .. max(1, n_words // 2)``; the first ``k`` words (after
``prompt``) become ``text_input`` for the encoder and the rest ``text_output`` for the
decoder. The draw uses torch's generator, so ``torch.manual_seed`` (which DataLoader
workers derive their seeds from) makes it reproducible.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from lavislike.registry import PROCESSORS

_CAPTION_PUNCT = re.compile(r"([.!\"()*#:;~])")
_MULTI_SPACE = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int = 50) -> str:
    """BLIP caption cleaning (see module docstring)."""
    caption = _CAPTION_PUNCT.sub(" ", caption.lower())
    caption = _MULTI_SPACE.sub(" ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


def pre_question(question: str, max_words: int = 50) -> str:
    """BLIP question cleaning: punctuation deleted, trailing spaces removed, truncated."""
    question = _CAPTION_PUNCT.sub("", question.lower()).rstrip(" ")
    words = question.split(" ")
    if len(words) > max_words:
        question = " ".join(words[:max_words])
    return question


def prefix_lm_split(caption: str, generator: torch.Generator | None = None) -> tuple[str, str]:
    """Cut ``caption`` after a random word ``k`` in ``1 .. max(1, n // 2)``.

    A one-word caption goes entirely to the output (empty prefix).
    """
    words = caption.split()
    if len(words) < 2:
        return "", caption.strip()
    k = int(torch.randint(1, len(words) // 2 + 1, (1,), generator=generator))
    return " ".join(words[:k]), " ".join(words[k:])


@dataclass
class CaptionConfig:
    name: str = "blip_caption"
    prompt: str = ""
    max_words: int = 50
    prefix_lm: bool = False  # split into text_input / text_output (FlanT5 stage 2)


@dataclass
class QuestionConfig:
    name: str = "blip_question"
    max_words: int = 50


@PROCESSORS.register("blip_caption", config=CaptionConfig)
class BlipCaptionProcessor:
    """Clean a caption; optionally split it for prefix language modelling.

    Returns:
        ``prompt + cleaned`` (str), or with ``prefix_lm`` a dict
        ``{"text_input": prompt + prefix, "text_output": rest}``.
    """

    def __init__(self, prompt: str = "", max_words: int = 50, prefix_lm: bool = False):
        self.prompt, self.max_words, self.prefix_lm = prompt, max_words, prefix_lm

    def __call__(self, caption: str):
        clean = pre_caption(caption, self.max_words)
        if not self.prefix_lm:
            return self.prompt + clean
        prefix, rest = prefix_lm_split(clean)
        return {"text_input": self.prompt + prefix, "text_output": rest}

    @classmethod
    def from_config(cls, cfg) -> "BlipCaptionProcessor":
        return cls(cfg.get("prompt", ""), cfg.get("max_words", 50), cfg.get("prefix_lm", False))

    def __repr__(self) -> str:
        return f"BlipCaptionProcessor(prompt={self.prompt!r}, max_words={self.max_words}, prefix_lm={self.prefix_lm})"


@PROCESSORS.register("blip_question", config=QuestionConfig)
class BlipQuestionProcessor:
    """Clean a question (``pre_question``)."""

    def __init__(self, max_words: int = 50):
        self.max_words = max_words

    def __call__(self, question: str) -> str:
        return pre_question(question, self.max_words)

    @classmethod
    def from_config(cls, cfg) -> "BlipQuestionProcessor":
        return cls(cfg.get("max_words", 50))

    def __repr__(self) -> str:
        return f"BlipQuestionProcessor(max_words={self.max_words})"
