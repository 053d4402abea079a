"""A synthetic vision-language corpus of coloured shapes, generated in seconds from a seed.

Each image shows one to three shapes (circle, square, triangle, diamond, each in one of
six colours, small or large) in distinct cells of a 3 x 3 grid, on one of three
backgrounds. Captions describe every shape with its size, colour and place, worded by
one of several templates; a scene whose first caption was already used is redrawn, so
captions are unique per image and retrieval is meaningful. Questions ask about colour,
shape, count, position and presence (yes/no, balanced). Videos show one shape moving in
one of four directions.

Files written under ``out_dir`` (LAVIS annotation formats, the same the real builders read)::

    images/{train,val,test}/NNNNN.jpg
    annotations/caption_train.json       [{image, caption, image_id}]          (2 captions / image)
    annotations/caption_{val,test}.json  [{image, caption: [..], image_id}]
    annotations/caption_{val,test}_gt.json   COCO captions format (pycocotools)
    annotations/vqa_{train,val,test}.json    [{question_id, question, answer: [x10], image, image_id}]
    annotations/vqa_{val,test}_questions.json / _annotations.json   VQAv2 format
    videos/{train,val,test}/NNNNN.mp4    (with_video)
    annotations/video_caption_*.json, video_caption_{val,test}_gt.json, video_qa_*.json
    manifest.json                        parameters and counts (written last)
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond")
BACKGROUNDS = {"black": (15, 15, 15), "gray": (128, 128, 128), "white": (245, 245, 245)}
SIZES = ("small", "large")
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
_PLACE = {
    "top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left corner", "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
_MOTION = {"right": "from left to right", "left": "from right to left", "down": "downwards", "up": "upwards"}
N_ANSWERS = 10  # VQAv2 rows carry ten annotator answers
VIDEO_FRAMES = 16
VIDEO_FPS = 8


@dataclass(frozen=True)
class Shape:
    shape: str
    color: str
    size: str
    position: str

    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: str


# -- scenes and words ------------------------------------------------------------------
def random_scene(rng: np.random.Generator) -> Scene:
    n = int(rng.integers(1, 4))
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    shapes, kinds = [], set()
    for c in sorted(cells):
        while True:  # one shape per (colour, shape): "the red circle" must be unambiguous
            kind = (SHAPES[rng.integers(len(SHAPES))], list(COLORS)[rng.integers(len(COLORS))])
            if kind not in kinds:
                break
        kinds.add(kind)
        shapes.append(Shape(kind[0], kind[1], SIZES[rng.integers(len(SIZES))], POSITIONS[int(c)]))
    return Scene(tuple(shapes), list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))])


def article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def captions_for(scene: Scene, rng: np.random.Generator, k: int = 2) -> list[str]:
    """``k`` differently worded captions of ``scene`` (the first is the canonical one)."""
    objs = [f"{s.phrase()} {_PLACE[s.position]}" for s in scene.shapes]
    n, bg = len(scene.shapes), scene.background
    templates = [
        lambda: f"{_join(objs)} on a {bg} background",
        lambda: f"a picture of {_join(objs)} on {bg}",
        lambda: f"{NUMBER_WORDS[n]} shape{'s' if n > 1 else ''} on a {bg} background: {_join(objs)}",
        lambda: f"the image shows {_join(objs)} against a {bg} background",
        lambda: f"an image with a {bg} background showing {_join(objs)}",
    ]
    order = rng.permutation(len(templates))[:k]
    return [templates[int(i)]() for i in order]


def _answer_rows(question: str, answer: str, qtype: str) -> dict:
    return {"question": question, "answer": answer, "type": qtype}


def questions_for(scene: Scene, rng: np.random.Generator) -> list[dict]:
    """Five questions: colour, shape, count, position, presence (yes/no drawn 50/50)."""
    target = scene.shapes[int(rng.integers(len(scene.shapes)))]
    same_shape = [s for s in scene.shapes if s.shape == target.shape]
    where = f" {_PLACE[target.position]}" if len(same_shape) > 1 else ""
    n = len(scene.shapes)
    qs = [
        _answer_rows(f"What color is the {target.shape}{where}?", target.color, "color"),
        _answer_rows(f"What shape is {_PLACE[target.position]}?", target.shape, "shape"),
        _answer_rows("How many shapes are there?", str(n), "count"),
        _answer_rows(f"Where is the {target.color} {target.shape}?", target.position, "position"),
    ]
    present = {(s.color, s.shape) for s in scene.shapes}
    if rng.random() < 0.5:
        color, shape = target.color, target.shape
    else:
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        color, shape = absent[int(rng.integers(len(absent)))]
    answer = "yes" if (color, shape) in present else "no"
    qs.append(_answer_rows(f"Is there a {color} {shape}?", answer, "yes/no"))
    return qs


# -- drawing -----------------------------------------------------------------------------
def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.94, cy + r * 0.8), (cx - r * 0.94, cy + r * 0.8)]
    return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]  # diamond


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, color: str, cx: float, cy: float, r: float) -> None:
    fill = COLORS[color]
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=fill)


def render_scene(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    img = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    cell = size / 3
    for s in scene.shapes:
        row, col = divmod(POSITIONS.index(s.position), 3)
        r = cell * (0.42 if s.size == "large" else 0.24)
        slack = cell / 2 - r
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack) * 0.8
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack) * 0.8
        draw_shape(draw, s.shape, s.color, cx, cy, r)
    return img


def write_video(path: Path, shape: str, color: str, background: str, direction: str, size: int,
                rng: np.random.Generator) -> None:
    """A clip of one shape crossing the frame (OpenCV, mp4v)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, (size, size))
    dx, dy = DIRECTIONS[direction]
    r = size * 0.12
    lane = rng.uniform(0.3, 0.7) * size
    for t in range(VIDEO_FRAMES):
        progress = 0.15 + 0.7 * t / (VIDEO_FRAMES - 1)
        along = progress * size if (dx + dy) > 0 else (1 - progress) * size
        cx, cy = (along, lane) if dx else (lane, along)
        frame = Image.new("RGB", (size, size), BACKGROUNDS[background])
        draw_shape(ImageDraw.Draw(frame), shape, color, cx, cy, r)
        writer.write(np.asarray(frame)[:, :, ::-1].copy())  # OpenCV wants BGR
    writer.release()


# -- writing -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticParams:
    seed: int = 0
    n_train: int = 200
    n_val: int = 50
    n_test: int = 50
    image_size: int = 128
    with_video: bool = True


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def _coco_gt(rows: list[dict], media_key: str) -> dict:
    """COCO captions ground truth (pycocotools ``COCO`` + ``loadRes`` ready)."""
    images, anns = [], []
    for row in rows:
        images.append({"id": row["image_id"], "file_name": row[media_key]})
        for cap in row["caption"]:
            anns.append({"id": len(anns), "image_id": row["image_id"], "caption": cap})
    return {"info": {"description": "lavislike synthetic"}, "licenses": [], "type": "captions",
            "images": images, "annotations": anns}


def _vqa_files(rows: list[dict]) -> tuple[dict, dict]:
    """VQAv2 question and annotation files for the official-style accuracy."""
    questions = [{"image_id": r["image_id"], "question": r["question"], "question_id": r["question_id"]} for r in rows]
    anns = [
        {
            "question_id": r["question_id"], "image_id": r["image_id"], "question_type": r["question_type"],
            "answer_type": "yes/no" if r["question_type"] == "yes/no" else ("number" if r["question_type"] == "count" else "other"),
            "multiple_choice_answer": r["answer"][0],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(r["answer"])],
        }
        for r in rows
    ]
    return ({"task_type": "Open-Ended", "data_type": "synthetic", "questions": questions},
            {"data_type": "synthetic", "annotations": anns})


def _unique_scene(rng: np.random.Generator, used: set[str]) -> tuple[Scene, list[str]]:
    for _ in range(1000):
        scene = random_scene(rng)
        caps = captions_for(scene, rng)
        if caps[0] not in used:
            used.add(caps[0])
            return scene, caps
    return scene, caps  # the scene space is exhausted: accept a repeat


def _write_split(out: Path, split: str, n: int, first_id: int, p: SyntheticParams,
                 rng: np.random.Generator, used: set[str]) -> dict[str, list[dict]]:
    cap_rows, vqa_rows = [], []
    for i in range(n):
        image_id = first_id + i
        scene, caps = _unique_scene(rng, used)
        rel = f"{split}/{i:05d}.jpg"
        path = out / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        render_scene(scene, p.image_size, rng).save(path, quality=95)
        if split == "train":
            cap_rows += [{"image": rel, "caption": c, "image_id": image_id} for c in caps]
        else:
            cap_rows.append({"image": rel, "caption": caps, "image_id": image_id})
        for q, qa in enumerate(questions_for(scene, rng)):
            vqa_rows.append({"question_id": image_id * 10 + q, "question": qa["question"],
                             "answer": [qa["answer"]] * N_ANSWERS, "image": rel, "image_id": image_id,
                             "question_type": qa["type"]})
    return {"caption": cap_rows, "vqa": vqa_rows}


def _write_video_split(out: Path, split: str, n: int, first_id: int, p: SyntheticParams,
                       rng: np.random.Generator) -> dict[str, list[dict]]:
    cap_rows, qa_rows = [], []
    for i in range(n):
        vid_id = first_id + i
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = list(COLORS)[rng.integers(len(COLORS))]
        bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
        rel = f"{split}/{i:05d}.mp4"
        write_video(out / "videos" / rel, shape, color, bg, direction, p.image_size, rng)
        caps = [f"{article(color)} {shape} moves {_MOTION[direction]} on a {bg} background",
                f"a video of {article(color)} {shape} moving {direction} over {bg}"]
        if split == "train":
            cap_rows += [{"video": rel, "caption": c, "image_id": vid_id} for c in caps]
        else:
            cap_rows.append({"video": rel, "caption": caps, "image_id": vid_id})
        asked = direction if rng.random() < 0.5 else list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
        qas = [("What color is the moving shape?", color, "color"),
               ("Which shape is moving?", shape, "shape"),
               (f"Which direction does the {shape} move?", direction, "direction"),
               (f"Does the {shape} move {asked}?", "yes" if asked == direction else "no", "yes/no")]
        for q, (question, answer, qtype) in enumerate(qas):
            qa_rows.append({"question_id": vid_id * 10 + q, "question": question, "answer": [answer],
                            "video": rel, "image_id": vid_id, "question_type": qtype})
    return {"video_caption": cap_rows, "video_qa": qa_rows}


def make_synthetic(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = 200,
    n_val: int = 50,
    n_test: int = 50,
    image_size: int = 128,
    with_video: bool = True,
) -> dict:
    """Generate the corpus into ``out_dir`` (replacing what is there); deterministic in ``seed``.

    The corpus is written to a sibling temp folder and moved into place at the end, so
    an interrupted run never leaves a half-written corpus behind a manifest.

    Returns:
        The manifest (parameters, counts, root) also written to ``manifest.json``.
    """
    p = SyntheticParams(seed, n_train, n_val, n_test, image_size, with_video)
    out = Path(out_dir).expanduser().resolve()
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    used: set[str] = set()
    counts, first_id = {}, 0
    video_rng = np.random.default_rng([seed, 1])  # separate stream: videos don't shift images
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        rows = _write_split(tmp, split, n, first_id, p, rng, used)
        if with_video:
            rows.update(_write_video_split(tmp, split, n, first_id, p, video_rng))
        for kind, kind_rows in rows.items():
            _dump(tmp / "annotations" / f"{kind}_{split}.json", kind_rows)
            counts[f"{kind}_{split}"] = len(kind_rows)
            if split != "train" and kind in ("caption", "video_caption"):
                _dump(tmp / "annotations" / f"{kind}_{split}_gt.json",
                      _coco_gt(kind_rows, "image" if kind == "caption" else "video"))
            if split != "train" and kind == "vqa":
                questions, anns = _vqa_files(kind_rows)
                _dump(tmp / "annotations" / f"vqa_{split}_questions.json", questions)
                _dump(tmp / "annotations" / f"vqa_{split}_annotations.json", anns)
        first_id += n
    manifest = {"params": asdict(p), "counts": counts}
    _dump(tmp / "manifest.json", manifest)
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    return {**manifest, "root": str(out)}


def read_manifest(root: str | os.PathLike) -> dict | None:
    """The manifest of a generated corpus, or None when there is none."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
