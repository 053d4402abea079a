"""The web app in a real browser: ``lavislike serve`` started on a free loopback port with
a tiny random checkpoint, driven by headless Chromium; the page must show the strings the
model itself returns when called from Python (and a message, not a crash, for a file
that is not an image). The screenshot goes to ``$LAVISLIKE_OUTPUT/serve_browser_test/``
(default ``./output``)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from browser import headless_chromium

from script_env import REPO, free_port, script_env
QUESTION = "what colour is the circle?"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from lavislike.models import load_model, save_pretrained

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("serve") / "blip2_opt_tiny"
    save_pretrained(load_model("blip2_opt", "tiny", load_pretrained=False), folder)
    return folder


def _wait_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 50.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"lavislike serve exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"lavislike serve did not answer on {url} in {timeout:.0f} s: {log.read_text()[-2000:]}")


def _shape_image(path: Path) -> Path:
    img = Image.new("RGB", (48, 48), (30, 60, 200))
    ImageDraw.Draw(img).ellipse((10, 10, 38, 38), fill=(220, 20, 20))
    img.save(path)
    return path


def _expected(checkpoint: Path, image: Path) -> tuple[str, str]:
    """Caption and answer from the checkpoint called directly (the page's defaults: beam 3,
    at most 30 caption tokens, 10 answer tokens)."""
    from lavislike.models import load_model
    from lavislike.processors import build_processor

    model = load_model("blip2_opt", checkpoint=checkpoint, is_eval=True)
    pixels = build_processor({"name": "blip_image_eval", "image_size": 32})(Image.open(image).convert("RGB"))
    samples = {"image": pixels.unsqueeze(0), "text_input": [QUESTION]}
    caption = model.generate(samples, num_beams=3, max_length=30, min_length=1)
    answer = model.predict_answers(samples, num_beams=3, max_len=10)
    return caption[0], answer[0]


def _tab(driver, title: str, part: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 20)
    wait.until(lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == title])[0].click()
    return wait.until(lambda d: d.find_element(By.CSS_SELECTOR, part))


def _run_and_read(driver, tab: str, before: str = "") -> str:
    """Click ``#<tab>-run`` and return the output box's text once it changes."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.CSS_SELECTOR, f"#{tab}-run").click()
    box = f"#{tab}-output textarea"
    return WebDriverWait(driver, 30).until(
        lambda d: (v := d.find_element(By.CSS_SELECTOR, box).get_attribute("value")) != before and v)


def _upload(driver, tab: str, path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.CSS_SELECTOR, f"#{tab}-image input[type=file]").send_keys(str(path))
    # the upload is done when its preview shows
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#{tab}-preview img"))


def test_browser_shows_the_models_caption_and_answer(tmp_path, tiny_checkpoint):
    from selenium.webdriver.common.by import By

    image = _shape_image(tmp_path / "shape.png")
    not_image = tmp_path / "notes.png"  # an image name, text inside
    not_image.write_text("not an image\n")
    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}/"
    env = script_env(GRADIO_ANALYTICS_ENABLED="False")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lavislike", "serve", "--checkpoint", str(tiny_checkpoint),
                                 "--port", str(port), "--device", "cpu"], env=env, stdout=out, stderr=subprocess.STDOUT)
    driver = None
    try:
        want_caption, want_answer = _expected(tiny_checkpoint, image)  # while the server starts
        assert want_caption.strip() and want_answer.strip()
        _wait_up(url, proc, log)
        driver = headless_chromium()
        driver.get(url)

        _tab(driver, "Captioning", "#caption-image input[type=file]")
        _upload(driver, "caption", image)
        assert _run_and_read(driver, "caption") == want_caption

        _tab(driver, "Visual question answering", "#vqa-image input[type=file]")
        _upload(driver, "vqa", image)
        driver.find_element(By.CSS_SELECTOR, "#vqa-question textarea").send_keys(QUESTION)
        assert _run_and_read(driver, "vqa") == want_answer

        _tab(driver, "Image-text matching", "#match-image input[type=file]")
        driver.find_element(By.CSS_SELECTOR, "#match-image input[type=file]").send_keys(str(not_image))
        driver.find_element(By.CSS_SELECTOR, "#match-text textarea").send_keys("a red circle")
        time.sleep(1)  # the rejected upload leaves the image empty
        assert _run_and_read(driver, "match").startswith("Error: ")
        assert proc.poll() is None, "the server stopped after a bad upload"
        _tab(driver, "Captioning", "#caption-output textarea")
    finally:
        if driver is not None:
            shot = Path(os.environ.get("LAVISLIKE_OUTPUT", REPO / "output")) / "serve_browser_test" / "page.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(shot))  # the last page seen, passed or failed
            driver.quit()
        proc.terminate()
        proc.wait(timeout=20)
