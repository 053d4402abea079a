"""The demo's frozen LLM: a tiny OPT pre-trained on the corpus's text alone.

It is saved as an ordinary Hugging Face folder (``config.json``, weights, tokenizer
files), so stage 2 loads it through the same ``causal_lm`` adapter as OPT-2.7B.
"""
from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Sequence

import torch

logger = logging.getLogger(__name__)


def train_tokenizer(texts: Sequence[str], out_dir: str | Path, vocab_size: int = 800):
    """A byte-level BPE tokenizer with OPT's special tokens, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<unk>"]  # OPT: pad=1, bos=eos=2 after reorder below
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(list(texts), trainer)
    bos = tok.token_to_id("</s>")
    # OPT's tokenizer starts every sequence with </s>; stage-2 code relies on that.
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", bos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(str(out_dir))
    return fast


def pretrain_tiny_opt(
    texts: Sequence[str],
    out_dir: str | Path,
    *,
    steps: int = 400,
    batch_size: int = 32,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    lr: float = 3e-3,
    max_length: int = 128,
    seed: int = 0,
) -> Path:
    """Train a tiny ``OPTForCausalLM`` on ``texts`` (each ending in ``"\\n"``) and save it.

    Args:
        texts: documents (see :mod:`lavislike.demo.text_corpus`).
        out_dir: the Hugging Face folder to write (config, weights, tokenizer).
        steps / batch_size / lr: the optimisation (AdamW, warm-up then cosine).
        hidden / layers / heads: the OPT sizes.
        max_length: tokens kept per document; the model gets room for a soft prompt too.

    Returns:
        The folder, loadable with ``AutoModelForCausalLM.from_pretrained``.
    """
    from transformers import OPTConfig, OPTForCausalLM

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = train_tokenizer(texts, out_dir)
    config = OPTConfig(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, ffn_dim=4 * hidden,
        num_attention_heads=heads, max_position_embeddings=max_length + 64, word_embed_proj_dim=hidden,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        dropout=0.0, attention_dropout=0.0,
    )
    model = OPTForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    texts = list(texts)
    model.train()
    for step in range(steps):
        batch = tok(rng.sample(texts, min(batch_size, len(texts))), return_tensors="pt", padding=True,
                    truncation=True, max_length=max_length)
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            logger.info("tiny OPT step %d/%d loss %.3f", step + 1, steps, loss.item())
    model.eval()
    model.save_pretrained(str(out_dir))
    return out_dir


def final_loss(model_dir: str | Path, texts: Sequence[str], max_length: int = 128) -> float:
    """Mean token loss of the saved model on ``texts`` (a quick check that it learned)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    batch = tok(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    with torch.no_grad():
        return float(model(**batch, labels=batch.input_ids.masked_fill(batch.attention_mask == 0, -100)).loss)
