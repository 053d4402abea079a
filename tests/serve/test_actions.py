"""What the app's tabs compute, without a browser: uploads refused with a message, the
matching scores against the model's own ITM / ITC heads, search against a brute-force
ranking, the folder features built once, and the command's one-line refusal."""
from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from lavislike.serve.actions import ServeSession, Unsupported, parse_answers
from lavislike.serve.images import UploadError, read_image
from lavislike.serve.models import Served, demo_checkpoints, processors_for


def _image(path, colour):
    img = Image.new("RGB", (40, 40), (250, 250, 250))
    ImageDraw.Draw(img).rectangle((8, 8, 30, 30), fill=colour)
    img.save(path)
    return path


@pytest.fixture(scope="module")
def matcher() -> Served:
    from lavislike.models import load_model

    torch.manual_seed(0)
    model = load_model("blip2_image_text_matching", "tiny", load_pretrained=False, is_eval=True)
    return Served(model, *processors_for(model), "tiny matcher")


def test_read_image_refuses_non_images_and_oversize_files(tmp_path):
    text = tmp_path / "a.png"
    text.write_text("hello")
    with pytest.raises(UploadError, match="a.png: not an image"):
        read_image(text)
    big = _image(tmp_path / "big.png", (255, 0, 0))
    with pytest.raises(UploadError, match="over the 0.0001 MB upload limit"):
        read_image(big, max_mb=0.0001)
    with pytest.raises(UploadError, match="40x40 pixels is over the 100 pixel limit"):
        read_image(big, max_pixels=100)
    with pytest.raises(UploadError, match="upload an image first"):
        read_image(None)
    assert read_image(big).size == (40, 40)


def test_match_scores_are_the_models_itm_and_itc(tmp_path, matcher):
    session = ServeSession([matcher])
    path = _image(tmp_path / "red.png", (255, 0, 0))
    scores = session.match(path, "a red square")
    pixels = matcher.vis(Image.open(path).convert("RGB")).unsqueeze(0)
    samples = {"image": pixels, "text_input": [matcher.txt("a red square")]}
    with torch.no_grad():
        itm = matcher.model(samples, match_head="itm").softmax(-1)[0, 1]
        itc = matcher.model(samples, match_head="itc").reshape(-1)[0]
    assert scores["itm"] == pytest.approx(float(itm), abs=1e-5)
    assert scores["itc"] == pytest.approx(float(itc), abs=1e-5)
    with pytest.raises(Unsupported, match="VQA needs a model"):  # stage 1 has no LLM
        session.answer(path, "what colour?")


def test_search_ranks_by_itc_and_builds_features_once(tmp_path, matcher):
    folder = tmp_path / "images"
    folder.mkdir()
    colours = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (200, 200, 0)]
    paths = [_image(folder / f"{i}.png", c) for i, c in enumerate(colours)]
    (folder / "broken.jpg").write_text("not a jpeg")  # skipped, not fatal
    session = ServeSession([matcher], image_folder=folder)
    hits = session.search("a green square", top_k=4)
    want = []
    for path in paths:
        pixels = matcher.vis(Image.open(path).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            sim = matcher.model({"image": pixels, "text_input": [matcher.txt("a green square")]}, match_head="itc")
        want.append((float(sim.reshape(-1)[0]), path.name))
    want.sort(reverse=True)
    assert [p.name for p, _ in hits] == [name for _, name in want]
    assert [s for _, s in hits] == pytest.approx([s for s, _ in want], abs=1e-5)
    session.search("a blue square")
    assert session.searcher.builds == 1
    _image(folder / "4.png", (0, 0, 0))  # a new file: the folder is indexed again
    assert len(session.search("a black square", top_k=10)) == 5
    assert session.searcher.builds == 2


def test_parse_answers():
    assert parse_answers("red, blue\ngreen,,") == ["red", "blue", "green"]


def test_demo_checkpoints_stage2_first(tmp_path):
    for run in ("blip2_tiny/pretrain_stage1", "blip2_tiny/pretrain_stage2"):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "model_best.safetensors").write_bytes(b"")
    assert [p.parent.name for p in demo_checkpoints(tmp_path)] == ["pretrain_stage2", "pretrain_stage1"]


def test_serve_script_without_a_model_says_how_to_get_one(tmp_path, fake_venv):
    """``bash run_scripts/serve.sh`` before the demo: one line, exit status 2."""
    import subprocess

    from script_env import REPO as repo, script_env

    env = script_env(LAVISLIKE_VENV=str(fake_venv), LAVISLIKE_OUTPUT=str(tmp_path))
    res = subprocess.run(["bash", "run_scripts/serve.sh"], cwd=repo, env=env, capture_output=True, text=True,
                         timeout=120)
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stdout + res.stderr
    missing = tmp_path / "blip2_tiny" / "pretrain_stage2" / "model_best.safetensors"
    assert lines[0].startswith(f"lavislike serve: error: no model to serve: {missing} not found; "
                               "run `bash run_scripts/demo.sh` first")
