"""The collate contract: which keys are tensors, which stay lists, bad samples dropped."""
import pytest
import torch

from lavislike.datasets.bad_data import SkippedSample
from lavislike.datasets.collate import collate
from lavislike.errors import DataError


def _item(i):
    return {"image": torch.full((3, 4, 4), float(i)), "text_input": f"t{i}", "image_id": i,
            "answers": ["a", "b"][: 1 + i % 2], "weights": [1.0][: 1] if i % 2 == 0 else [0.5, 0.5],
            "question_id": f"q{i}", "instance_id": str(i)}


def test_tensor_and_list_keys():
    batch = collate([_item(0), _item(1), _item(2)])
    assert batch["image"].shape == (3, 3, 4, 4) and batch["image"][1].eq(1).all()
    assert batch["image_id"].dtype == torch.long and batch["image_id"].tolist() == [0, 1, 2]
    assert batch["n_answers"].tolist() == [1, 2, 1] and batch["n_answers"].dtype == torch.long
    assert batch["text_input"] == ["t0", "t1", "t2"]
    assert batch["answers"] == [["a"], ["a", "b"], ["a"]]
    assert batch["weights"] == [[1.0], [0.5, 0.5], [1.0]]
    assert batch["question_id"] == ["q0", "q1", "q2"] and batch["instance_id"] == ["0", "1", "2"]
    assert "bad_samples" not in batch


def test_video_stacks_and_string_ids_stay_list():
    items = [{"video": torch.zeros(5, 3, 2, 2), "image_id": "abc"}, {"video": torch.ones(5, 3, 2, 2), "image_id": "x"}]
    batch = collate(items)
    assert batch["video"].shape == (2, 5, 3, 2, 2)
    assert batch["image_id"] == ["abc", "x"]


def test_skipped_samples_dropped_and_listed():
    bad = SkippedSample("/data/x.jpg", "corrupt", "ds", 1)
    batch = collate([_item(0), bad, _item(2)])
    assert batch["image"].shape[0] == 2 and batch["text_input"] == ["t0", "t2"]
    assert batch["bad_samples"] == [bad]
    only_bad = collate([bad])
    assert only_bad == {"bad_samples": [bad]}


def test_mismatched_keys_raise():
    with pytest.raises(DataError, match="different keys"):
        collate([_item(0), {"image": torch.zeros(3, 4, 4)}])
