"""Caption / question cleaning on hand-written examples; the prefix-LM split."""
import pytest
import torch

from lavislike.processors import build_processor
from lavislike.processors.text import pre_caption, pre_question, prefix_lm_split


@pytest.mark.parametrize("raw, expected", [
    ("A Man riding a Horse.", "a man riding a horse"),
    ('Two dogs: "playing" (outside)!!', "two dogs playing outside"),
    ("  lots   of\tspace\n", "lots of\tspace"),  # a lone tab is kept, as in the reference
    ("a  \t b", "a b"),
    ("one*two#three~four;five", "one two three four five"),
    ("keeps, commas and it's apostrophes-and-dashes?", "keeps, commas and it's apostrophes-and-dashes?"),
])
def test_pre_caption(raw, expected):
    assert pre_caption(raw) == expected


def test_pre_caption_truncates_words():
    assert pre_caption("one two three four five", max_words=3) == "one two three"


def test_pre_question_deletes_punctuation():
    assert pre_question("What color is the cat's (left) ear?") == "what color is the cat's left ear?"
    assert pre_question("Is it a.b.c  ") == "is it abc"


def test_caption_processor_prompt():
    proc = build_processor({"name": "blip_caption", "prompt": "a photo of ", "max_words": 4})
    assert proc("A Dog. Running on the beach") == "a photo of a dog running on"


def test_prefix_lm_split_range_and_seed():
    caption = "one two three four five six seven eight"  # 8 words: k in 1..4
    ks = set()
    for seed in range(60):
        torch.manual_seed(seed)
        prefix, rest = prefix_lm_split(caption)
        assert f"{prefix} {rest}" == caption
        ks.add(len(prefix.split()))
    assert ks == {1, 2, 3, 4}
    torch.manual_seed(7)
    a = prefix_lm_split(caption)
    torch.manual_seed(7)
    assert prefix_lm_split(caption) == a


def test_prefix_lm_edge_cases():
    assert prefix_lm_split("single") == ("", "single")
    assert prefix_lm_split("two words") == ("two", "words")


def test_caption_processor_prefix_lm():
    proc = build_processor({"name": "blip_caption", "prefix_lm": True, "prompt": "> "})
    torch.manual_seed(0)
    out = proc("A red circle on a black background.")
    assert set(out) == {"text_input", "text_output"}
    assert out["text_input"].startswith("> ")
    assert out["text_input"][2:] + " " + out["text_output"] == "a red circle on a black background"
