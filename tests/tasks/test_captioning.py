import json
import logging

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from lavislike.tasks import caption_metrics
from lavislike.tasks.captioning import CaptionTask

GTS = {
    1: ["a dog runs on the grass.", "A brown dog running in a field", "dog playing outside"],
    2: ["two people ride bikes down a street", "People riding bicycles.", "cyclists on a city road"],
    3: ["a plate of food with broccoli", "A meal on a white plate", "food and vegetables on a dish"],
    4: ["a cat sleeping on a couch", "The cat is asleep on the sofa.", "a sleeping cat"],
}
PRED = {1: "a dog running on grass", 2: "people riding bikes on a street", 3: "a plate of food",
        4: "a dog on a couch"}


class CaptionData(Dataset):
    annotation = [{"image": f"{i}.jpg", "caption": GTS[i], "image_id": i} for i in GTS]

    def __len__(self):
        return len(self.annotation)

    def __getitem__(self, idx):
        return {"image": torch.zeros(3, 2, 2), "image_id": self.annotation[idx]["image_id"]}

    def eval_image_id(self, ann, index):
        return ann["image_id"]


class Captioner(nn.Module):
    def generate(self, samples, **kw):
        assert kw["num_beams"] == 3
        return [PRED[int(i)] for i in samples["image_id"]]


def _reference(gts, res):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    g = tok.tokenize({i: [{"caption": c} for c in caps] for i, caps in gts.items()})
    r = tok.tokenize({i: [{"caption": res[i]}] for i in res})
    bleu, _ = Bleu(4).compute_score(g, r)
    return {"Bleu_1": bleu[0], "Bleu_4": bleu[3], "CIDEr": Cider().compute_score(g, r)[0],
            "ROUGE_L": Rouge().compute_score(g, r)[0]}


@pytest.mark.skipif(not caption_metrics.java_available(), reason="PTB tokenizer reference needs java")
def test_task_scores_match_pycocoevalcap(tmp_path):
    loader = torch.utils.data.DataLoader(CaptionData(), batch_size=3, collate_fn=torch.utils.data.default_collate)
    task = CaptionTask({"num_beams": 3})
    got = task.evaluate(Captioner(), loader, split="val", epoch=0, output_dir=tmp_path)
    ref = _reference(GTS, PRED)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-9)
    assert 0 < got["CIDEr"] < 10 and "METEOR" in got
    assert got["agg_metrics"] == pytest.approx(got["CIDEr"] + got["Bleu_4"])
    saved = json.loads((tmp_path / "result" / "val_epoch0.json").read_text())
    assert sorted(r["image_id"] for r in saved) == [1, 2, 3, 4]


def test_without_java_metrics_skip_meteor(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(caption_metrics, "java_available", lambda: False)
    gt = caption_metrics.write_coco_gt(GTS, tmp_path / "gt.json")
    res = tmp_path / "res.json"
    res.write_text(json.dumps([{"image_id": i, "caption": c} for i, c in PRED.items()]))
    with caplog.at_level(logging.WARNING, logger="lavislike"):
        got = caption_metrics.coco_caption_eval(gt, res, spice=True)
    assert "METEOR" not in got and "SPICE" not in got
    assert got["approximate"] is True
    assert any(r.levelno == logging.WARNING and "APPROXIMATE" in r.getMessage() for r in caplog.records)
    from pycocoevalcap.cider.cider import Cider

    # same tokens the Java tokenizer gives for these captions: compare CIDEr directly
    toks = caption_metrics.simple_ptb_tokenize
    ref = Cider().compute_score(toks(GTS), toks({i: [c] for i, c in PRED.items()}))[0]
    assert got["CIDEr"] == pytest.approx(ref)
    assert toks({0: ["The cat is asleep on the sofa."]})[0] == ["the cat is asleep on the sofa"]


def test_without_java_the_metrics_file_says_approximate(tmp_path, monkeypatch):
    monkeypatch.setattr(caption_metrics, "java_available", lambda: False)
    loader = torch.utils.data.DataLoader(CaptionData(), batch_size=3, collate_fn=torch.utils.data.default_collate)
    got = CaptionTask({"num_beams": 3}).evaluate(Captioner(), loader, split="val", epoch=0, output_dir=tmp_path)
    line = json.loads((tmp_path / "evaluate.txt").read_text().splitlines()[-1])
    assert got["approximate"] is True and line["approximate"] is True and "CIDEr" in line


def test_scores_without_an_output_folder_leave_no_temporary_files(tmp_path, monkeypatch):
    """Without ``output_dir`` the ground truth and results go to a temporary folder that is gone afterwards."""
    import tempfile

    monkeypatch.setattr(caption_metrics, "java_available", lambda: False)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    results = [{"image_id": i, "caption": c} for i, c in PRED.items()]
    got = CaptionTask({"num_beams": 3}).compute_metrics(results, CaptionData(), "val", None)
    toks = caption_metrics.simple_ptb_tokenize
    from pycocoevalcap.cider.cider import Cider

    assert got["CIDEr"] == pytest.approx(Cider().compute_score(toks(GTS), toks({i: [c] for i, c in PRED.items()}))[0])
    assert list(scratch.iterdir()) == []
