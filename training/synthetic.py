"""Synthetic reasoning-segmentation data in the ReasonSeg format, with known answers.

Each scene holds a few coloured shapes; each query names its target only implicitly ("the colour of the sky",
"the shape that could roll"), so a model must route the query to the mask to beat a query-blind baseline.
Written as ReasonSeg files (image.jpg + image.json with `text`, `is_sentence`, `shapes` polygons), so the
training readers and `lisa-eval` run on it exactly as on the real data set.

    python -m training.synthetic OUT_DIR --train 2000 --val 100 --size 64 --objects 2,3
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# colour name -> (RGB, implicit descriptions of it)
COLOURS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "red": ((220, 30, 30), ("the object with the colour of a ripe tomato", "the thing coloured like fire")),
    "green": ((30, 180, 40), ("the object with the colour of fresh grass", "the thing coloured like leaves")),
    "blue": ((30, 60, 220), ("the object with the colour of the sky", "the thing coloured like the sea")),
    "yellow": ((235, 215, 30), ("the object with the colour of a banana", "the thing coloured like the sun")),
}
# shape name -> implicit descriptions
SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("the shape that could roll", "the round thing"),
    "square": ("the shape like a dice face", "the thing with four equal sides"),
    "triangle": ("the shape like a slice of pizza", "the thing with three corners"),
}
QUERY_KINDS = ["colour:" + c for c in COLOURS] + ["shape:" + s for s in SHAPES]


@dataclass
class SceneObject:
    colour: str
    shape: str
    polygon: np.ndarray  # [K, 2] float (x, y)


def _polygon(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    if shape == "circle":
        angles = np.linspace(0, 2 * math.pi, 24, endpoint=False)
    elif shape == "square":
        angles = np.array([0.25, 0.75, 1.25, 1.75]) * math.pi
    else:
        angles = np.array([-0.5, 1 / 6, 5 / 6]) * math.pi
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)


def make_scene(rng: np.random.Generator, size: int, n_objects: int, query_kinds: list[str]):
    """One scene: (RGB uint8 [size, size, 3], objects, query text, query kind index, target object index).

    Objects differ in the attribute the query asks about, so exactly one object answers it; they do not overlap.
    """
    kind = query_kinds[int(rng.integers(len(query_kinds)))]
    attr, value = kind.split(":")
    pool = list(COLOURS) if attr == "colour" else list(SHAPES)
    others = [v for v in pool if v != value]
    values = [value] + list(rng.choice(others, size=min(n_objects - 1, len(others)), replace=False))
    objects: list[SceneObject] = []
    r_min, r_max = size * 0.12, size * 0.2
    for v in values:
        for _ in range(100):
            r = rng.uniform(r_min, r_max)
            cx, cy = rng.uniform(r, size - r, 2)
            if all(math.hypot(cx - o.polygon[:, 0].mean(), cy - o.polygon[:, 1].mean()) > r + r_max + 2
                   for o in objects):
                break
        colour = v if attr == "colour" else str(rng.choice(list(COLOURS)))
        shape = v if attr == "shape" else str(rng.choice(list(SHAPES)))
        objects.append(SceneObject(colour, shape, _polygon(shape, cx, cy, r)))
    order = rng.permutation(len(objects))
    objects = [objects[i] for i in order]
    target = int(np.where(order == 0)[0][0])
    image = np.full((size, size, 3), 200, np.uint8) + rng.integers(-12, 12, (size, size, 3)).astype(np.uint8)
    for o in objects:
        cv2.fillPoly(image, [np.round(o.polygon).astype(np.int32)], COLOURS[o.colour][0])
    descriptions = COLOURS[value][1] if attr == "colour" else SHAPES[value]
    query = str(rng.choice(descriptions))
    return image, objects, query, query_kinds.index(kind), target


def write_split(out: Path, n: int, size: int, objects: tuple[int, int], seed: int,
                query_kinds: list[str] | None = None) -> None:
    """n scenes as ReasonSeg files: NNNNN.jpg + NNNNN.json (target polygon labelled "target", others not)."""
    kinds = query_kinds or QUERY_KINDS
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        k = int(rng.integers(objects[0], objects[1] + 1))
        image, objs, query, kind, target = make_scene(rng, size, k, kinds)
        cv2.imwrite(str(out / f"{i:05d}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        shapes = [{"label": "target", "points": objs[target].polygon.round(2).tolist(), "shape_type": "polygon"}]
        meta = {"text": [query], "is_sentence": False, "shapes": shapes, "query_kind": kinds[kind],
                "query_kind_index": kind, "objects": [{"colour": o.colour, "shape": o.shape,
                                                       "points": o.polygon.round(2).tolist()} for o in objs]}
        (out / f"{i:05d}.json").write_text(json.dumps(meta))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=100)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--objects", default="2,3")
    p.add_argument("--kinds", default="colour", help="colour, shape or colour,shape")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    lo, hi = (int(x) for x in a.objects.split(","))
    kinds = [k for k in QUERY_KINDS if k.split(":")[0] in a.kinds.split(",")]
    write_split(Path(a.out) / "train", a.train, a.size, (lo, hi), a.seed, kinds)
    write_split(Path(a.out) / "val", a.val, a.size, (lo, hi), a.seed + 1, kinds)


if __name__ == "__main__":
    main()
