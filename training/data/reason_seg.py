"""ReasonSeg: one JSON per image beside the .jpg (`text` queries, `is_sentence`, `shapes` polygons).

Polygons are rasterised as the reference does: largest area first, cv2.polylines + cv2.fillPoly on int32
points, labels containing "ignore" -> 255, others -> 1, label "flag" skipped. Training uses mask == 1.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .sample import BadSample, Sample, count_skipped, read_rgb
from .templates import ANSWERS, LONG_QUESTIONS, NO_TARGET_ANSWERS, SHORT_QUESTIONS


def read_json(path: Path) -> dict:
    """A ReasonSeg annotation (some files are cp1252, as the reference allows); BadSample when unreadable."""
    try:
        raw = path.read_bytes()
        try:
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return json.loads(raw.decode("cp1252"))
    except (OSError, ValueError) as e:
        raise BadSample(f"{path}: unreadable annotation ({e})") from None


def _draw(mask: np.ndarray, points, value: int) -> None:
    poly = np.array([points], dtype=np.int32)
    cv2.polylines(mask, poly, True, value, 1)
    cv2.fillPoly(mask, poly, value)


def rasterize(shapes: list[dict], height: int, width: int, source: str = "") -> np.ndarray:
    """uint8 HxW mask (0 / 1 target / 255 ignore) from ReasonSeg `shapes`."""
    valid, areas = [], []
    for shape in shapes:
        if shape["label"].lower() == "flag":  # deprecated annotations
            continue
        pts = np.asarray(shape["points"], dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
            raise BadSample(f"{source}: polygon with points of shape {pts.shape}")
        if (pts < -1).any() or (pts[:, 0] > width + 1).any() or (pts[:, 1] > height + 1).any():
            raise BadSample(f"{source}: polygon out of the {width}x{height} image")
        tmp = np.zeros((height, width), np.uint8)
        _draw(tmp, shape["points"], 1)
        areas.append(tmp.sum())
        valid.append(shape)
    mask = np.zeros((height, width), np.uint8)
    for k in list(np.argsort(areas)[::-1].astype(np.int32)):  # the reference's order, ties included
        shape = valid[k]
        _draw(mask, shape["points"], 255 if "ignore" in shape["label"].lower() else 1)
    return mask


@dataclass
class ReasonSegRecord:
    name: str
    image_path: Path
    queries: list[str]
    is_sentence: bool
    annotation: dict

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(image RGB, gt uint8 mask)."""
        image = read_rgb(self.image_path)
        return image, rasterize(self.annotation.get("shapes", []), *image.shape[:2], source=str(self.image_path))


def scan(folder: str | Path, skipped: dict | None = None) -> list[ReasonSegRecord]:
    """Every usable (image, json) pair of a split folder, sorted; bad files are logged, counted and skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"ReasonSeg split folder {folder} does not exist")
    records = []
    for json_path in sorted(folder.glob("*.json")):
        image_path = json_path.with_suffix(".jpg")
        try:
            if not image_path.is_file():
                raise BadSample(f"{json_path}: no image {image_path.name} beside it")
            anno = read_json(json_path)
            queries = anno.get("text")
            if isinstance(queries, str):
                queries = [queries]
            if not queries:
                raise BadSample(f"{json_path}: no query text")
            records.append(ReasonSegRecord(json_path.stem, image_path, list(queries), bool(anno.get("is_sentence")),
                                           anno))
        except BadSample as e:
            count_skipped(skipped, type(e).__name__, e)
    return records


class ReasonSegDataset:
    """Training samples: up to `queries_per_image` queries of one image, each its own conversation with a
    template question and a random answer, every one targeting the image's mask == 1. An annotation with an empty
    `shapes` list means the queried thing is not in the image: its answers are text only (`no_target_answers`,
    no [SEG], no mask)."""

    source = "reason_seg"

    def __init__(self, folder: str | Path, queries_per_image: int = 3, probe_key: str | None = None,
                 presence_key: str | None = None,
                 answers: list[str] | tuple[str, ...] | None = None,
                 no_target_answers: list[str] | tuple[str, ...] | None = None,
                 sentence_templates: list[str] | tuple[str, ...] | None = None):
        self.skipped: dict[str, int] = {}
        self.sentence_templates = list(sentence_templates) if sentence_templates else LONG_QUESTIONS
        self.answers = list(answers) if answers else ANSWERS
        self.no_target_answers = list(no_target_answers) if no_target_answers else NO_TARGET_ANSWERS
        self.records = scan(folder, self.skipped)
        self.queries_per_image = queries_per_image
        self.probe_key = probe_key  # annotation field holding a class index for the training-only probe
        self.presence_key = presence_key  # annotation field listing the classes in view (training-only probe)
        if not self.records:
            raise FileNotFoundError(f"no usable ReasonSeg samples in {folder}")

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, rng: random.Random) -> Sample:
        for _ in range(10):  # a few bad files must not stop training
            rec = self.records[rng.randrange(len(self.records))]
            try:
                image, gt = rec.load()
            except BadSample as e:
                count_skipped(self.skipped, "BadSample", e)
                continue
            k = min(self.queries_per_image, len(rec.queries))
            queries = rng.sample(rec.queries, k)
            present = bool(rec.annotation.get("shapes"))
            convs = []
            for q in queries:
                question = (rng.choice(self.sentence_templates).format(sent=q) if rec.is_sentence
                            else rng.choice(SHORT_QUESTIONS).format(class_name=q.lower()))
                convs.append([(question, rng.choice(self.answers if present else self.no_target_answers))])
            in_view = [int(c) for c in rec.annotation[self.presence_key]] if self.presence_key else None
            asked = int(rec.annotation[self.probe_key]) if self.probe_key else None
            if not present:
                return Sample(rec.name, convs, [], self.source, rec.image_path, image, [], in_view, asked)
            target = (gt == 1).astype(np.uint8)
            probe = [asked] * k if self.probe_key else []
            return Sample(rec.name, convs, [target] * k, self.source, rec.image_path, image, probe, in_view, asked)
        raise RuntimeError(f"too many unusable ReasonSeg samples ({self.skipped})")


@dataclass
class EvalRecord:
    name: str
    image: np.ndarray
    query: str
    is_sentence: bool
    gt: np.ndarray


def read_reason_seg_split(folder: str | Path, limit: int | None = None) -> list[EvalRecord]:
    """Evaluation view of a split: text[0] only, as the reference evaluates."""
    out = []
    for rec in scan(folder)[:limit]:
        try:
            image, gt = rec.load()
        except BadSample as e:
            count_skipped(None, "BadSample", e)
            continue
        out.append(EvalRecord(rec.name, image, rec.queries[0], rec.is_sentence, gt))
    return out
