"""Tiny models, tokenizers and overrides that tests build locally (no downloads)."""
from __future__ import annotations

from pathlib import Path

import torch

# -- stage-1 models: tiny WordPiece tokenizer and tiny HF BLIP-2 retrieval models ----------
TINY_CORPUS = [
    "a cat sitting on a red mat",
    "two dogs running in the park",
    "a man riding a horse on the beach",
    "a plate of food with rice and vegetables",
    "a bus parked next to a tall building",
    "children playing football on the grass",
    "an old red car in the street at night",
    "a woman holding an umbrella in the rain",
    "a bird flying over the blue sea",
    "a kitchen with a white table and chairs",
] * 5


def build_tiny_bert_tokenizer(folder: Path) -> Path:
    """A BERT WordPiece tokenizer (uncased, [PAD]=0, [DEC] as BOS) over ``TINY_CORPUS``, saved.

    The vocabulary is the specials, every lower-case ASCII letter, digit and punctuation mark
    alone and as ``##`` continuation (any such word tokenizes), then the corpus's words, most
    frequent first. It is built, not trained: ``WordPieceTrainer`` breaks ties between equally
    frequent merges differently in every process, so the vocabulary (and with it every tiny
    model's numbers) changed from run to run.

    Returns:
        ``folder``, loadable with ``AutoTokenizer.from_pretrained``.
    """
    import string
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = Counter(word for line in TINY_CORPUS
                     for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation) | {c for w in counts for c in w})
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars), *words]
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece()
    fast = BertTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
        cls_token="[CLS]", mask_token="[MASK]", do_lower_case=True,
    )
    fast.add_special_tokens({"bos_token": "[DEC]"})
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return folder


def build_tiny_hf_blip2_retrieval(
    folder: Path,
    tokenizer_dir: Path,
    *,
    seed: int = 0,
    vision: dict | None = None,
    qformer: dict | None = None,
    num_query_tokens: int = 5,
    image_text_hidden_size: int = 12,
):
    """Build a random ``Blip2ForImageTextRetrieval``, save it with the tokenizer into ``folder``.

    Every parameter is redrawn (std 0.1 around its init kind) so that outputs are far from
    trivial. Returns the HF model (eval mode).
    """
    from transformers import AutoTokenizer, Blip2Config, Blip2ForImageTextRetrieval

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    vision_cfg = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      image_size=28, patch_size=7, layer_norm_eps=1e-6, qkv_bias=True)
    vision_cfg.update(vision or {})
    q_cfg = dict(vocab_size=len(tok), hidden_size=24, num_hidden_layers=3, num_attention_heads=4,
                 intermediate_size=40, cross_attention_frequency=2, max_position_embeddings=40,
                 use_qformer_text_input=True, layer_norm_eps=1e-12)
    q_cfg.update(qformer or {})
    config = Blip2Config(vision_config=vision_cfg, qformer_config=q_cfg, num_query_tokens=num_query_tokens,
                         image_text_hidden_size=image_text_hidden_size)
    config.architectures = ["Blip2ForImageTextRetrieval"]
    torch.manual_seed(seed)
    model = Blip2ForImageTextRetrieval(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            owner = name.rsplit(".", 2)[-2].lower() if name.count(".") >= 1 else ""
            if "norm" in owner:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.1)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return model


def tiny_stage1_overrides(tokenizer_dir: Path, **extra) -> dict:
    """``load_model`` overrides for a tiny random stage-1 model using a test tokenizer."""
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    base = {
        "load_pretrained": False,
        "tokenizer": str(tokenizer_dir),
        "qformer": {"vocab_size": vocab, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    }
    base.update(extra)
    return base


def assert_itm_like_hf(model, hf, tokenizer_dir: Path, texts: list[str]) -> None:
    """Our ITM logits for random images equal ``Blip2ForImageTextRetrieval``'s."""
    from transformers import AutoTokenizer

    size = hf.config.vision_config.image_size
    images = torch.randn(2, 3, size, size)
    enc = AutoTokenizer.from_pretrained(str(tokenizer_dir))(texts, padding="longest", return_tensors="pt")
    with torch.no_grad():
        ref = hf(pixel_values=images, input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                 use_image_text_matching_head=True).logits_per_image
    torch.testing.assert_close(model({"image": images, "text_input": texts}), ref, atol=1e-5, rtol=1e-5)
