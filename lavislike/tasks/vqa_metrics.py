"""VQA accuracy as the official VQA evaluation tool computes it, and GQA exact match.

Accuracy of one prediction against the raw annotator answers of a question: for each
annotator, ``min(#other annotators who gave the prediction / 3, 1)``; the mean over the
annotators (with ten answers: the ten leave-one-out subsets). Two normalisations:

* ``official`` (default): the current ``vqaEval.py`` of GT-Vision-Lab/VQA. Newlines/tabs
  become spaces and both sides are stripped; only when the annotators disagree are the
  prediction and the answers normalised (punctuation, number words -> digits, articles
  dropped, contractions restored). Unanimous answers are compared as written.
* ``lavis``: the older copy LAVIS vendors (``lavis/common/vqa_tools/vqa_eval.py``), for
  reproducing LAVIS-reported numbers: the prediction is always normalised; disagreeing
  answers only lose punctuation; the answers are not whitespace-stripped.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict

_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # a period not followed by a digit
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")

# apostrophe-less spellings -> the contraction (the official table, keyed by what people type)
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}


def process_punctuation(text: str) -> str:
    """Drop punctuation glued to words (``"dog."``), space out the rest (``"red/white"``)."""
    out = text
    digit_comma = _DIGIT_COMMA.search(text) is not None
    for p in _PUNCTUATION:
        if (p + " " in text or " " + p in text) or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # the official code passes re.UNICODE as the count argument: at most 32 periods go
    return _PERIOD.sub("", out, 32)


def process_digit_article(text: str) -> str:
    """Lower-case, number words -> digits, drop articles, restore contractions."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """Whitespace, punctuation, digits / articles / contractions (what both tools apply to a
    prediction that they normalise)."""
    return process_digit_article(process_punctuation(clean_whitespace(text)))


VQA_METRICS = ("official", "lavis")


def comparable_answers(pred: str, gt_answers: list[str], method: str = "official") -> tuple[str, list[str]]:
    """The prediction and the answers as the chosen tool compares them (``==``)."""
    if method == "official":
        res, gts = clean_whitespace(pred), [clean_whitespace(a) for a in gt_answers]
        if len(set(gts)) > 1:
            res, gts = normalize_answer(res), [normalize_answer(a) for a in gts]
        return res, gts
    if method == "lavis":
        gts = list(gt_answers)
        if len(set(gts)) > 1:
            gts = [process_punctuation(a) for a in gts]
        return normalize_answer(pred), gts
    raise ValueError(f"VQA metric '{method}' is not one of {', '.join(VQA_METRICS)}")


def vqa_accuracy(pred: str, gt_answers: list[str], method: str = "official") -> float:
    """VQA accuracy (0..1) of one prediction against the annotators' raw answers (any number)."""
    if not gt_answers:
        return 0.0
    res, gts = comparable_answers(pred, gt_answers, method)
    n, m = len(gts), Counter(gts)[res]
    # leave one annotator out: the m who gave `res` leave m-1 matches, the n-m others leave m
    return (m * min(1.0, (m - 1) / 3.0) + (n - m) * min(1.0, m / 3.0)) / n if m else 0.0


def expand_answers(answers: list[str], weights: list[float] | None, num_annotators: int) -> list[str]:
    """Approximate raw answers from distinct answers + weights (``count / num_annotators``).

    Exact only when the question had ``num_annotators`` answers; used only when neither the
    official annotation file nor the dataset's rows give the raw answers.
    """
    if weights is None:
        return list(answers)
    out = []
    for a, w in zip(answers, weights):
        out += [a] * max(1, int(round(float(w) * num_annotators)))
    return out


def vqa_report(results: list[dict], method: str = "official") -> dict[str, float]:
    """Accuracy in percent: overall (``agg_metrics``) and per answer type, as the official
    tool reports it (``accuracy_yes/no``, ``accuracy_number``, ``accuracy_other``).

    Args:
        results: ``[{"answer": pred, "gt_answers": [raw answers], "answer_type": optional}]``.
        method: ``official`` or ``lavis`` (see the module docstring).
    """
    per_type: dict[str, list[float]] = defaultdict(list)
    scores = []
    for r in results:
        acc = vqa_accuracy(r["answer"], r["gt_answers"], method)
        scores.append(acc)
        if r.get("answer_type"):
            per_type[r["answer_type"]].append(acc)
    overall = 100.0 * sum(scores) / len(scores) if scores else 0.0
    out = {"agg_metrics": overall, "accuracy": overall}
    out.update({f"accuracy_{t}": 100.0 * sum(v) / len(v) for t, v in sorted(per_type.items())})
    return out


def gqa_report(results: list[dict]) -> dict[str, float]:
    """Exact match in percent after normalising the prediction (``[{"answer", "gt_answer"}]``)."""
    hits = [float(normalize_answer(r["answer"]) == r["gt_answer"]) for r in results]
    acc = 100.0 * sum(hits) / len(hits) if hits else 0.0
    return {"agg_metrics": acc, "accuracy": acc}
