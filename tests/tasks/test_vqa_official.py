"""VQA accuracy against hand-computed official values and an independent transcription of
the official evaluation loop (GT-Vision-Lab/VQA vqaEval.py, latest revision) and of the
older copy LAVIS vendors."""
import json
import random
import re

import pytest

from lavislike.datasets.base import VQAEvalDataset
from lavislike.errors import ConfigError, DataError
from lavislike.tasks.vqa import VQATask
from lavislike.tasks.vqa_metrics import vqa_accuracy, vqa_report


# -- hand-computed official values ---------------------------------------------------------
@pytest.mark.parametrize("pred,answers,want", [
    # one answer: leaving the only annotator out leaves nobody to agree with
    ("cat", ["cat"], 0.0),
    # three: the two "cat" annotators each leave one "dog"; the "dog" annotator leaves none
    ("dog", ["cat", "cat", "dog"], (1 / 3 + 1 / 3 + 0) / 3),
    ("cat", ["cat", "cat", "dog"], (1 / 3 + 1 / 3 + 2 / 3) / 3),
    # five, disagreeing: "two" -> "2", so three "2"s
    ("2", ["two", "2", "2", "3", "3"], (3 * 2 / 3 + 2 * 1) / 5),
    ("3", ["two", "2", "2", "3", "3"], (2 * 1 / 3 + 3 * 2 / 3) / 5),
    # ten, disagreeing: every answer normalised -> all ten match
    ("2", ["two"] * 8 + ["2"] * 2, 1.0),
    ("Two!", ["2"] * 3 + ["3"] * 7, (3 * 2 / 3 + 7 * 1) / 10),
    # ten, unanimous: compared as written after whitespace stripping
    ("Yes", ["yes"] * 10, 0.0),
    ("yes ", [" yes"] * 10, 1.0),
    ("a dog.", ["dog"] * 10, 0.0),
])
def test_official_hand_computed(pred, answers, want):
    assert vqa_accuracy(pred, answers) == pytest.approx(want, abs=1e-12)


def test_example_of_the_issue():
    assert round(vqa_accuracy("dog", ["cat", "cat", "dog"]), 4) == 0.2222


@pytest.mark.parametrize("pred,answers,want", [
    ("Yes", ["yes"] * 10, 1.0),  # the prediction is always normalised
    ("2", ["two"] * 8 + ["2"] * 2, (2 * 1 / 3 + 8 * 2 / 3) / 10),  # answers lose punctuation only
    ("dog", [" dog"] * 10, 0.0),  # answers are not stripped
])
def test_lavis_copy_hand_computed(pred, answers, want):
    assert vqa_accuracy(pred, answers, method="lavis") == pytest.approx(want, abs=1e-12)


# -- an independent transcription of the published loops ------------------------------------
PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
MANUAL = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
          "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
CONTRACTIONS = {"dont": "don't", "isnt": "isn't", "cant": "can't", "whats": "what's"}  # the ones VOCAB uses


def t_punct(s):
    out = s
    for p in PUNCT:
        if (p + " " in s or " " + p in s) or re.search(r"(\d)(,)(\d)", s) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return re.compile(r"(?!<=\d)(\.)(?!\d)").sub("", out, re.UNICODE)


def t_digit_article(s):
    words = [MANUAL.get(w, w) for w in s.lower().split()]
    words = [w for w in words if w not in ("a", "an", "the")]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def t_ws(s):
    return s.replace("\n", " ").replace("\t", " ").strip()


def transcribed(pred, answers, method):
    gts = [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)]
    if method == "official":
        for d in gts:
            d["answer"] = t_ws(d["answer"])
        res = t_ws(pred)
        if len({d["answer"] for d in gts}) > 1:
            for d in gts:
                d["answer"] = t_digit_article(t_punct(d["answer"]))
            res = t_digit_article(t_punct(res))
    else:
        res = t_digit_article(t_punct(t_ws(pred)))
        if len({d["answer"] for d in gts}) > 1:
            for d in gts:
                d["answer"] = t_punct(d["answer"])
    acc = []
    for datum in gts:
        others = [d for d in gts if d != datum]
        acc.append(min(1, len([d for d in others if d["answer"] == res]) / 3))
    return sum(acc) / len(acc)


VOCAB = ["dog", "Dog", "dog.", " dog", "the dog", "a dog", "cat", "two", "2", "Two", "2.5", "1,000", "1000",
         "yes", "Yes", "yes!", "no", "none", "0", "dont", "don't", "isnt", "red/white", "red white",
         "red, white", "what's up", "whats up", "\tyes\n", "an apple", "apple"]


@pytest.mark.parametrize("method", ["official", "lavis"])
def test_matches_transcription_on_generated_cases(method):
    rng = random.Random(0)
    differ_from_other_method = 0
    for _ in range(400):
        n = rng.choice([1, 2, 3, 5, 10, 10, 10])
        pool = rng.sample(VOCAB, rng.choice([1, 2, 3]))
        answers = [rng.choice(pool) for _ in range(n)]
        pred = rng.choice(pool + [rng.choice(VOCAB)])
        want = transcribed(pred, answers, method)
        assert vqa_accuracy(pred, answers, method) == pytest.approx(want, abs=1e-12), (pred, answers)
        other = "lavis" if method == "official" else "official"
        differ_from_other_method += transcribed(pred, answers, other) != want
    assert differ_from_other_method > 20  # the cases tell the two tools apart


# -- the task reads the official files -----------------------------------------------------
def _dataset(tmp_path, eval_files=None, rows=None) -> VQAEvalDataset:
    """A real VQA evaluation split: ``rows`` (the questions of ``eval_files`` when not given) and
    the builder's ``eval_files``; the task reads the files, else the rows' answers."""
    rows = rows or [{"question_id": q} for q in (1, 2, 3)]
    (tmp_path / "rows.json").write_text(json.dumps([{"image": "im.jpg", "question": "what is it?", **r} for r in rows]))
    dataset = VQAEvalDataset(None, None, tmp_path, tmp_path / "rows.json")
    dataset.eval_files = dict(eval_files or {})
    return dataset


def _official_files(tmp_path):
    anns = [
        {"question_id": 1, "answer_type": "other", "question_type": "what",
         "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(["cat", "cat", "dog"])]},
        {"question_id": 2, "answer_type": "number", "question_type": "how many",
         "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(["two", "2", "2", "3", "3"])]},
        {"question_id": 3, "answer_type": "yes/no", "question_type": "is",
         "answers": [{"answer": "yes", "answer_id": i + 1} for i in range(10)]},
    ]
    (tmp_path / "anno.json").write_text(json.dumps({"annotations": anns}))
    (tmp_path / "ques.json").write_text(json.dumps({"questions": [{"question_id": q} for q in (1, 2, 3)]}))
    return {"vqa_annotations": tmp_path / "anno.json", "vqa_questions": tmp_path / "ques.json"}


def test_task_scores_from_the_official_annotation_file(tmp_path):
    files = _official_files(tmp_path)
    # the batch's (answers, weights) would expand to 10 answers: the file's raw answers win
    results = [{"question_id": 1, "answer": "dog", "gt_answers": ["cat"] * 7 + ["dog"] * 3, "gt_expanded": True},
               {"question_id": 2, "answer": "2"},
               {"question_id": 3, "answer": "Yes"}]
    got = VQATask({}).compute_metrics(results, _dataset(tmp_path, eval_files=files), "val", None)
    q1, q2, q3 = 2 / 9, 0.8, 0.0
    assert got["accuracy"] == pytest.approx(100 * (q1 + q2 + q3) / 3)
    assert got["accuracy_other"] == pytest.approx(100 * q1)
    assert got["accuracy_number"] == pytest.approx(100 * q2)
    assert got["accuracy_yes/no"] == pytest.approx(0.0)
    assert "approximate" not in got
    lavis = VQATask({"vqa_metric": "lavis"}).compute_metrics(results, _dataset(tmp_path, eval_files=files), "val", None)
    assert lavis["accuracy_yes/no"] == pytest.approx(100.0)


def test_task_scores_from_dataset_rows_and_flags_expansion(tmp_path, caplog):
    rows = [{"question_id": 7, "answer": ["cat", "cat", "dog"]}, {"question_id": 8, "answer": "dog"}]
    results = [{"question_id": 7, "answer": "dog"}, {"question_id": 8, "answer": "dog"}]
    got = VQATask({}).compute_metrics(results, _dataset(tmp_path, rows=rows), "val", None)
    # one answer string: unanimous annotators, so an exact match scores 1
    assert got["accuracy"] == pytest.approx(100 * (2 / 9 + 1) / 2)
    expanded = [{"question_id": 7, "answer": "dog", "gt_answers": ["cat"] * 7 + ["dog"] * 3, "gt_expanded": True}]
    got = VQATask({}).compute_metrics(expanded, None, "val", None)
    assert got["approximate"] is True and "APPROXIMATE" in caplog.text


def test_task_errors(tmp_path):
    files = _official_files(tmp_path)
    with pytest.raises(DataError, match="question_id 99"):
        VQATask({}).compute_metrics([{"question_id": 99, "answer": "x"}], _dataset(tmp_path, eval_files=files), "val", None)
    with pytest.raises(ConfigError, match="run.vqa_metric.*official"):
        VQATask({"vqa_metric": "offical"})


def test_report_per_answer_type():
    rep = vqa_report([{"answer": "dog", "gt_answers": ["cat", "cat", "dog"], "answer_type": "other"},
                      {"answer": "yes", "gt_answers": ["yes"] * 10, "answer_type": "yes/no"}])
    assert rep["accuracy_other"] == pytest.approx(100 * 2 / 9)
    assert rep["accuracy_yes/no"] == pytest.approx(100.0)
    assert rep["agg_metrics"] == pytest.approx(100 * (2 / 9 + 1) / 2)
