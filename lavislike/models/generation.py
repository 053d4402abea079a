"""What ``generate`` returns when asked for token ids (``return_ids=True``).

Length arguments of every ``generate`` here (the Q-Former captioner, ``blip2_opt``,
``blip2_t5``) count *generated* tokens: neither the Q-Former's ``[DEC]`` start token, nor a
decoder start token, nor the prompt. (LAVIS counts differently per model: its Q-Former
captioner's ``max_length`` / ``min_length`` include ``[DEC]``, its FlanT5 ``min_length``
includes the decoder start token, its OPT lengths count new tokens; so LAVIS's
``max_length=30, min_length=10`` for the Q-Former is ``29, 9`` here.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GenerationOutput:
    """Generated captions / answers and their token ids.

    Attributes:
        texts: ``B * num_captions`` decoded strings, image-major.
        ids: ``(B * num_captions, L)`` the generated tokens only (no start token, no prompt),
            end token included, right-padded with the tokenizer's pad id.
    """

    texts: list[str]
    ids: torch.Tensor
