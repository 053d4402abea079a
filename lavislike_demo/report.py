"""The demo's outputs for people: the results table and a contact sheet of examples."""
from __future__ import annotations

import base64
import html
import io
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from PIL import Image, ImageDraw, ImageFont


@dataclass
class Row:
    """One metric: the model's value, its baselines (name -> value) and whether it clears them."""

    group: str
    metric: str
    value: float
    baselines: dict[str, Optional[float]]

    def best_baseline(self) -> float:
        return max(v for v in self.baselines.values() if v is not None)

    def clearly_above(self) -> bool:
        """Above every baseline by at least 5 points and 20 % of the strongest one."""
        base = self.best_baseline()
        return self.value >= base + max(5.0, 0.2 * abs(base))


BASELINE_COLUMNS = ("blind (blank images)", "chance / majority")


def format_table(rows: list[Row]) -> str:
    """A plain-text table: metric, model, each baseline, verdict."""
    head = ["task", "metric", "model", *BASELINE_COLUMNS, "clearly above?"]
    body = []
    for r in rows:
        cells = [r.group, r.metric, f"{r.value:6.1f}"]
        cells += ["" if r.baselines.get(c) is None else f"{r.baselines[c]:6.1f}" for c in BASELINE_COLUMNS]
        cells.append("yes" if r.clearly_above() else "NO")
        body.append(cells)
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    line = lambda cells: "  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    rule = "-" * len(line(head))
    return "\n".join([line(head), rule] + [line(c) for c in body])


# -- the contact sheet ---------------------------------------------------------------------
@dataclass
class Example:
    image: Path
    truth: str
    caption: str
    blind_caption: str
    qa: list[tuple[str, str, str]]  # (question, predicted, ground truth)


def collect_examples(corpus: Path, caption_results: list[dict], blind_results: list[dict],
                     vqa_results: list[dict], n: int = 8) -> list[Example]:
    """The first ``n`` test images with their generated captions and answers."""
    ann = corpus / "annotations"
    rows = json.loads((ann / "caption_test.json").read_text())[:n]
    caps = {r["image_id"]: r["caption"] for r in caption_results}
    blind = {r["image_id"]: r["caption"] for r in blind_results}
    answers = {r["question_id"]: r["answer"] for r in vqa_results}
    questions: dict[int, list] = {}
    for q in json.loads((ann / "vqa_test.json").read_text()):
        questions.setdefault(q["image_id"], []).append(q)
    out = []
    for row in rows:
        qa = [(q["question"], answers.get(q["question_id"], "?"), q["answer"][0])
              for q in questions.get(row["image_id"], [])]
        out.append(Example(corpus / "images" / row["image"], row["caption"][0], caps.get(row["image_id"], "?"),
                           blind.get(row["image_id"], "?"), qa))
    return out


def _png_base64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_html(examples: list[Example], path: Path, title: str = "lavislike demo") -> Path:
    """A self-contained HTML page (images embedded)."""
    cards = []
    for ex in examples:
        img = Image.open(ex.image).convert("RGB").resize((192, 192), Image.NEAREST)
        qa = "".join(
            f"<tr><td>{html.escape(q)}</td><td class={'ok' if p.strip() == t else 'bad'}>{html.escape(p)}</td>"
            f"<td>{html.escape(t)}</td></tr>" for q, p, t in ex.qa)
        cards.append(
            f"<div class=card><img src='data:image/png;base64,{_png_base64(img)}'>"
            f"<p><b>truth:</b> {html.escape(ex.truth)}</p><p><b>model:</b> {html.escape(ex.caption)}</p>"
            f"<p class=blind><b>blind:</b> {html.escape(ex.blind_caption)}</p>"
            f"<table><tr><th>question</th><th>answer</th><th>truth</th></tr>{qa}</table></div>")
    style = ("body{font-family:sans-serif;margin:20px} .card{display:inline-block;vertical-align:top;width:330px;"
             "margin:8px;padding:8px;border:1px solid #ccc} .card p{font-size:13px;margin:4px 0} "
             ".blind{color:#888} table{font-size:12px} .ok{color:green} .bad{color:#c00}")
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h2>{html.escape(title)}</h2>"
            "<p>Zero-shot captions and answers of the stage-2 model on test images "
            "(blind: the same model given a blank image).</p>" + "".join(cards) + "</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path


def write_png(examples: list[Example], path: Path, columns: int = 4) -> Path:
    """The same examples as one PNG (image, captions, answers under each)."""
    font = ImageFont.load_default()
    tile_w, img_px, line_h = 300, 160, 12
    tiles = []
    for ex in examples:
        lines = []
        for label, text in (("truth", ex.truth), ("model", ex.caption), ("blind", ex.blind_caption)):
            lines += textwrap.wrap(f"{label}: {text}", 48)
        for q, p, t in ex.qa:
            lines += textwrap.wrap(f"Q: {q} -> {p} ({t})", 48)
        tile = Image.new("RGB", (tile_w, img_px + 8 + line_h * len(lines)), "white")
        tile.paste(Image.open(ex.image).convert("RGB").resize((img_px, img_px), Image.NEAREST), (0, 0))
        draw = ImageDraw.Draw(tile)
        for i, text in enumerate(lines):
            draw.text((2, img_px + 4 + i * line_h), text, fill="black", font=font)
        tiles.append(tile)
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    height = sum(max(t.height for t in r) + 10 for r in rows)
    sheet = Image.new("RGB", (columns * (tile_w + 10), max(height, 1)), "white")
    y = 0
    for r in rows:
        for j, t in enumerate(r):
            sheet.paste(t, (j * (tile_w + 10), y))
        y += max(t.height for t in r) + 10
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
