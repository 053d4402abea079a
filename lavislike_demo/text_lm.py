"""The demo's frozen LLM: a tiny OPT pre-trained on the corpus's text alone.

Its documents (text only) may show their context pooled (see ``pretrain_tiny_opt``). It is
saved as an ordinary Hugging Face folder (``config.json``, weights, tokenizer
files), so stage 2 loads it through the same ``causal_lm`` adapter as OPT-2.7B.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from lavislike_demo.fit import LMSizes, fit


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


def _split_documents(tok, texts: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """``(context ids, rest ids)`` per document: the context is what comes before the first
    inner ``</s>`` (empty for a document without one); the rest starts with that ``</s>``."""
    bos = tok.bos_token
    out = []
    for text in texts:
        ctx, sep, rest = text.partition(bos)
        if not sep:
            ctx, rest = "", text
        else:
            rest = bos + rest
        out.append((tok(ctx, add_special_tokens=False).input_ids if ctx else [],
                    tok(rest, add_special_tokens=False).input_ids))
    return out


def _document_inputs(embed: torch.nn.Embedding, bos_id: int, ctx: list[int], rest: list[int],
                     pool_into: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input embeddings and labels of one document; ``pool_into > 0`` replaces the context by
    that many mean-pooled runs of consecutive token embeddings (no loss on them)."""
    ids = torch.tensor([bos_id] + ctx + rest)
    embeds = embed(ids)
    labels = ids.clone()
    labels[0] = -100
    if pool_into and len(ctx) > 1:
        k = min(pool_into, len(ctx))
        run = torch.zeros(len(ctx), dtype=torch.long)
        run[torch.randperm(len(ctx) - 1)[: k - 1] + 1] = 1
        run = run.cumsum(0)  # run index of each context token
        ctx_embeds = embeds[1 : 1 + len(ctx)]
        pooled = torch.zeros(k, embeds.shape[-1]).index_add(0, run, ctx_embeds)
        pooled = pooled / torch.bincount(run, minlength=k).unsqueeze(-1)
        embeds = torch.cat([embeds[:1], pooled, embeds[1 + len(ctx):]])
        labels = torch.cat([labels[:1], torch.full((k,), -100), labels[1 + len(ctx):]])
    return embeds, labels


def _repeats(docs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[list[int], list[int]]]:
    """The split documents whose rest (after its ``</s>``) is the context again."""
    return [(ctx, rest) for ctx, rest in docs if ctx and rest[1:] == ctx]


def pretrain_tiny_opt(
    texts: Sequence[str],
    out_dir: str | Path,
    sizes: LMSizes = LMSizes(),
    *,
    max_length: int = 128,
    pool_context: float = 0.0,
    pool_runs: tuple[int, int] = (4, 10),
    copy_steps: int = 0,
    seed: int = 0,
) -> Path:
    """Train a tiny ``OPTForCausalLM`` on ``texts`` (each ending in ``"\\n"``) and save it.

    Args:
        texts: documents (see :mod:`lavislike_demo.text_corpus`).
        out_dir: the Hugging Face folder to write (config, weights, tokenizer).
        sizes: steps / batch / lr (AdamW, warm-up then cosine) and the OPT sizes.
        max_length: tokens kept per document; the model gets room for a soft prompt too.
        pool_context: the share of documents whose context (the text before their inner
            ``</s>``) is shown as a few mean-pooled runs of token embeddings instead of
            tokens. A 2-layer LLM trained on tokens alone answers only from literal words,
            so it cannot read the Q-Former's soft prompt when asked a question, although
            it captions from it; reading blurred contexts teaches it to (the idea of
            noise-injected text-only training, CapDec). Still text alone: no image.
        pool_runs: how many pooled vectors such a context becomes (drawn per document).
        copy_steps: the first steps draw only the documents that repeat their context. The
            attention circuit that copies a word from the context (an induction head) forms
            late and abruptly; in the mixed corpus it never formed within the demo's budget,
            and the model copied where shapes are but not their colour, shape or background
            (loss at those words = guessing), so no image could change them in stage 2.
            A short lesson of copying alone forms it, and the mixed corpus keeps it.

    Returns:
        The folder, loadable with ``AutoModelForCausalLM.from_pretrained``.
    """
    from transformers import OPTConfig, OPTForCausalLM

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = train_tokenizer(texts, out_dir)
    config = OPTConfig(
        vocab_size=len(tok), hidden_size=sizes.hidden, num_hidden_layers=sizes.layers, ffn_dim=4 * sizes.hidden,
        num_attention_heads=sizes.heads, max_position_embeddings=max_length + 64,
        word_embed_proj_dim=sizes.hidden,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        dropout=0.0, attention_dropout=0.0,
    )
    model = OPTForCausalLM(config)
    embed = model.get_input_embeddings()
    docs = [(c, r[: max(1, max_length - 1 - len(c))]) for c, r in _split_documents(tok, texts)]
    copies = _repeats(docs)
    if copy_steps and not copies:
        raise ValueError("pretrain_tiny_opt: copy_steps > 0 but no document repeats its context "
                         "('{text}\\n</s>{text}\\n'); add such documents or set copy_steps=0")

    def loss_at(step: int) -> torch.Tensor:
        pool = copies if step < copy_steps else docs
        rows = [
            _document_inputs(embed, tok.bos_token_id, ctx, rest,
                             rng.randint(*pool_runs) if ctx and rng.random() < pool_context else 0)
            for ctx, rest in rng.sample(pool, min(sizes.batch, len(pool)))
        ]
        inputs = pad_sequence([e for e, _ in rows], batch_first=True)
        labels = pad_sequence([lab for _, lab in rows], batch_first=True, padding_value=-100)
        mask = pad_sequence([torch.ones(len(e), dtype=torch.long) for e, _ in rows], batch_first=True)
        return model(inputs_embeds=inputs, attention_mask=mask, labels=labels).loss

    fit(model, sizes.steps, sizes.lr, loss_at, label="tiny OPT")
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
