"""A tiny T5 pre-trained on the corpus's text alone: the frozen LLM of the encoder-decoder stage 2.

``projects/blip2_tiny/train/pretrain_stage2_t5.yaml`` reads it (``python -m lavislike_demo
prepare t5`` writes it; not part of the default demo). It is saved as an ordinary Hugging
Face folder and loaded by the same ``seq2seq_lm`` adapter as FlanT5.

In stage 2 the encoder reads ``[visual prompt][caption prefix]</s>`` and the decoder writes
the rest of the caption (prefix language modelling, as in the paper). The text-only
pre-training pairs (encoder text -> decoder text) have the same shape, with a description
of the scene where the visual prompt will be (each TRAIN image of the corpus, cleaned as
the text processors clean it; ``"\\n"`` ends the description):

* ``{prefix}`` -> ``{rest}`` - a caption split at a random word, no description;
* ``{caption}\\n{prefix}`` -> ``{rest}`` - the same with a description before it (the
  caption itself or another one of the scene);
* ``{caption}\\n`` -> ``{other caption}`` - describe the scene (captioning, empty prompt);
* ``{caption}\\nQuestion: {q} Short answer:`` -> ``{a}`` - the paper's zero-shot VQA
  prompt for encoder-decoder LLMs.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import torch

from lavislike_demo.fit import LMSizes, fit
from lavislike_demo.text_corpus import EOT, scene_texts


VQA_PROMPT = "Question: {} Short answer:"


def split_prefix(caption: str, rng: random.Random) -> tuple[str, str]:
    """Cut after word ``k`` in ``1 .. max(1, n // 2)``, the range of the ``blip_caption``
    processor's ``prefix_lm`` split (a one-word caption is all target)."""
    words = caption.split()
    if len(words) < 2:
        return "", caption.strip()
    k = rng.randint(1, len(words) // 2)
    return " ".join(words[:k]), " ".join(words[k:])


def t5_pairs(annotations_dir: str | Path, seed: int = 0) -> list[tuple[str, str]]:
    """All (encoder text, decoder text) pairs of the TRAIN split (module docstring), shuffled."""
    rng = random.Random(seed)
    pairs = []
    for scene in scene_texts(annotations_dir):
        caps = scene["captions"]
        for i, cap in enumerate(caps):
            prefix, rest = split_prefix(cap, rng)
            pairs.append((prefix, rest))
            context = rng.choice(caps)
            prefix, rest = split_prefix(cap, rng)
            pairs.append((f"{context}{EOT}{prefix}", rest))
            pairs.append((f"{cap}{EOT}", caps[(i + 1) % len(caps)]))
        for question, answer in scene["qa"]:
            pairs.append((f"{rng.choice(caps)}{EOT}{VQA_PROMPT.format(question)}", answer))
    rng.shuffle(pairs)
    return pairs


def train_t5_tokenizer(texts: Sequence[str], out_dir: str | Path, vocab_size: int = 800):
    """The demo's byte-level BPE (:func:`~lavislike_demo.text_lm.train_tokenizer`) with T5's
    conventions: no BOS, ``</s>`` appended to every text, ``<pad>`` = 0 (the decoder start)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from lavislike_demo.text_lm import train_tokenizer

    backend = train_tokenizer(texts, out_dir, vocab_size).backend_tokenizer
    eos = backend.token_to_id("</s>")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    if tok.pad_token_id != 0:
        raise RuntimeError(f"the T5 decoder starts from <pad>, expected at id 0, got {tok.pad_token_id}")
    tok.save_pretrained(str(out_dir))  # replaces the OPT-style files train_tokenizer wrote
    return tok


def pretrain_tiny_t5(
    pairs: Sequence[tuple[str, str]],
    out_dir: str | Path,
    sizes: LMSizes = LMSizes(),
    *,
    max_length: int = 96,
    seed: int = 0,
) -> Path:
    """Train a tiny ``T5ForConditionalGeneration`` on ``pairs`` and save it with its tokenizer.

    Args:
        pairs: (encoder text, decoder text), see :func:`t5_pairs`.
        out_dir: the Hugging Face folder to write (config, weights, tokenizer).
        sizes: steps / batch / lr (AdamW, warm-up then cosine) and the T5 sizes (``hidden`` = d_model).
        max_length: tokens kept per text.

    Returns:
        The folder, loadable with ``AutoModelForSeq2SeqLM.from_pretrained``.
    """
    from transformers import T5Config, T5ForConditionalGeneration

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = train_t5_tokenizer([t for pair in pairs for t in pair if t], out_dir)
    config = T5Config(
        vocab_size=len(tok), d_model=sizes.hidden, d_kv=sizes.hidden // sizes.heads, d_ff=2 * sizes.hidden,
        num_layers=sizes.layers, num_decoder_layers=sizes.layers, num_heads=sizes.heads,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
    )
    # FlanT5's gate is exact GELU under the seq2seq_lm adapter (its default config_overrides)
    config.dense_act_fn = "gelu"
    model = T5ForConditionalGeneration(config)
    pairs = list(pairs)

    def loss_at(step: int) -> torch.Tensor:
        batch = rng.sample(pairs, min(sizes.batch, len(pairs)))
        src = tok([s for s, _ in batch], return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        tgt = tok([t for _, t in batch], return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        labels = tgt.input_ids.masked_fill(tgt.attention_mask == 0, -100)
        return model(**src, labels=labels, decoder_attention_mask=tgt.attention_mask).loss

    fit(model, sizes.steps, sizes.lr, loss_at, label="tiny T5")
    model.save_pretrained(str(out_dir))
    return out_dir
