"""Tiny random LLMs and tokenizers for the stage-2 tests (built in the test, nothing downloaded).

* :func:`train_tokenizer` - a byte-level BPE trained with ``tokenizers`` on a few lines, with
  the special-token layout of OPT (``</s>`` as BOS), LLaMA (``<s>`` BOS, no pad token) or
  T5 (``</s>`` appended, ``<pad>`` = 0).
* :func:`save_tiny_llm` - a tiny random ``OPTForCausalLM`` / ``LlamaForCausalLM`` /
  ``T5ForConditionalGeneration`` plus its tokenizer in a folder.
"""
from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "a photo of a dog sitting on a couch",
    "two cats laying on a red blanket",
    "Question: what is on the table? Answer: a cup of coffee",
    "Question: how many people are there? Short answer: two",
    "a man riding a bike down the street\n",
    "yes no red blue green one two three four dog cat bird car\n",
    "an orange and white cat looks at the camera\n",
]

SPECIALS = {
    "opt": ["<pad>", "</s>", "<unk>"],
    "llama": ["<unk>", "<s>", "</s>"],
    "t5": ["<pad>", "</s>", "<unk>"],
}


def train_tokenizer(kind: str, vocab_size: int = 320):
    """A ``PreTrainedTokenizerFast`` with the given family's special-token layout."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS[kind],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    if kind == "opt":
        bos = tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", bos)])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
        )
    if kind == "llama":
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def tiny_text_config(kind: str, vocab_size: int, width: int = 24, seed_shift: int = 0):
    """A tiny ``transformers`` config of the family (sizes the tests do not care about)."""
    from transformers import LlamaConfig, OPTConfig, T5Config

    if kind == "opt":
        return OPTConfig(
            vocab_size=vocab_size, hidden_size=width, word_embed_proj_dim=width, ffn_dim=2 * width + seed_shift,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=96,
            pad_token_id=0, bos_token_id=1, eos_token_id=1, dropout=0.0, attention_dropout=0.0,
        )
    if kind == "llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width + seed_shift,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96,
            bos_token_id=1, eos_token_id=2, pad_token_id=None,
        )
    return T5Config(
        vocab_size=vocab_size, d_model=width, d_kv=6, d_ff=2 * width + seed_shift, num_layers=2,
        num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu", dropout_rate=0.0,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False,
    )


def build_tiny_llm(kind: str, vocab_size: int, seed: int = 0, **config_kwargs):
    """A random tiny model of the family (fp32, eval mode)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cfg = tiny_text_config(kind, vocab_size, **config_kwargs)
    torch.manual_seed(seed)
    auto = AutoModelForSeq2SeqLM if kind == "t5" else AutoModelForCausalLM
    model = auto.from_config(cfg)
    # random init is small; larger weights give peaked, informative distributions
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model.eval()


def save_tiny_llm(folder: Path, kind: str, seed: int = 0, **config_kwargs) -> Path:
    """Save a tiny random model of ``kind`` and its tokenizer into ``folder``."""
    tok = train_tokenizer(kind)
    model = build_tiny_llm(kind, len(tok), seed, **config_kwargs)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)
