import pytest

from lavislike.tasks.vqa_metrics import gqa_report, normalize_answer, vqa_accuracy, vqa_report


@pytest.mark.parametrize("raw,norm", [
    ("Two", "2"), ("a dog.", "dog"), ("The Dog", "dog"), ("dont", "don't"), ("isnt it", "isn't it"),
    ("red/white", "red white"), ("1,000", "1000"), ("3.5", "3.5"), ("yes!", "yes"), ("  none\n", "0"),
])
def test_normalisation(raw, norm):
    assert normalize_answer(raw) == norm


def test_accuracy_hand_computed():
    # 10 annotators; leave-one-out: answer given by c annotators scores
    # (c * min((c-1)/3, 1) + (10-c) * min(c/3, 1)) / 10
    gts = ["2"] * 3 + ["3"] * 7
    assert vqa_accuracy("Two", gts) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)  # 0.9
    assert vqa_accuracy("two", ["2"] + ["4"] * 9) == pytest.approx((0 + 9 * 1 / 3) / 10)  # 0.3
    assert vqa_accuracy("a dog.", ["dog"] * 10) == 0.0  # unanimous: compared as written (official)
    assert vqa_accuracy("dont", ["don't"] * 2 + ["no"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert vqa_accuracy("cat", ["dog"] * 10) == 0.0
    # disagreeing annotators: their answers lose punctuation ("dog." -> "dog")
    assert vqa_accuracy("dog", ["dog."] * 4 + ["cat"] * 6) == pytest.approx(1.0)
    # agreeing annotators are compared as written
    assert vqa_accuracy("dog", ["dog."] * 10) == 0.0


def test_report_per_answer_type_and_gqa():
    results = [
        {"answer": "yes", "gt_answers": ["yes"] * 10, "answer_type": "yes/no"},
        {"answer": "2", "gt_answers": ["2"] * 2 + ["3"] * 8, "answer_type": "number"},
        {"answer": "no", "gt_answers": ["yes"] * 10, "answer_type": "yes/no"},
    ]
    rep = vqa_report(results)
    n2 = (2 * 1 / 3 + 8 * 2 / 3) / 10
    assert rep["accuracy"] == pytest.approx(100 * (1 + n2 + 0) / 3)
    assert rep["accuracy_yes/no"] == pytest.approx(50.0)
    assert rep["accuracy_number"] == pytest.approx(100 * n2)
    assert rep["agg_metrics"] == rep["accuracy"]
    g = gqa_report([{"answer": "The Table.", "gt_answer": "table"}, {"answer": "chair", "gt_answer": "table"}])
    assert g["accuracy"] == pytest.approx(50.0)


def test_vqa_task_expands_answer_weights_to_annotators():
    import torch

    from lavislike.tasks.vqa import VQATask

    class Answerer(torch.nn.Module):
        def predict_answers(self, samples, **kw):
            assert kw["inference_method"] == "generate" and kw["prompt"] == "Question: {} Answer:"
            return ["Two", "a dog."]

    task = VQATask({"prompt": "Question: {} Answer:"})
    batch = {"question_id": [7, 8], "answers": [["2", "3"], ["dog"]], "weights": [[0.3, 0.7], [1.0]]}
    rows = task.valid_step(Answerer(), batch)
    assert rows[0]["gt_answers"] == ["2"] * 3 + ["3"] * 7
    rep = task.compute_metrics(rows, None, "val", None)
    # "a dog." vs ten unanimous "dog": compared as written (official) -> 0
    assert rep["accuracy"] == pytest.approx(100 * (0.9 + 0.0) / 2) and rep["approximate"] is True
