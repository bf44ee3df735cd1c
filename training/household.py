"""Household reasoning-segmentation data (ReasonSeg format) for the demo model `lisa-demo`.

Frames of `lisa_ros.scenes.household` scenes with implicit questions about what a robot meets at home ("where
would I put the clothes" -> the laundry basket), a few explicit ones ("the red mug") and questions about something
that is not there (answered in words, without a mask). Whole phrasings are held out: `val_heldout` asks only
phrasings that training never saw.

    python -m training.household OUT_DIR [--train 10000 --val 100 --size 160 120]

Writes OUT_DIR/{train,val,val_heldout,val_absent}/NNNNN.{jpg,json}: ReasonSeg's `text`, `is_sentence` and
`shapes` (the target's outline; empty when the thing is absent), plus `query_kind_index` (the training-only probe's
class), `visible_kind_indices` (the kinds in view, for the training-only presence probe), `kind`, and `objects`
(every visible object's outline, for the query-blind baselines).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from lisa_ros.scenes.household import KINDS, render, sample_layout
from lisa_ros.scenes.synthetic import SCANNET_COLOR

# kind -> (phrasings used in training, phrasings held out for evaluation). Implicit: the question names a use or a
# need, never the object. A model trained from scratch knows only the words it was trained on, so the held-out
# phrasings are new sentences made of words the training phrasings use (test_household checks this); a pretrained
# LISA would also understand new words.
IMPLICIT: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "laundry_basket": (("where would I put the clothes", "where should the dirty laundry go",
                        "where do the dirty socks go", "where can I toss my clothes", "where should my dirty shirt go",
                        "what holds the laundry", "where do I put the washing", "where can I put the dirty towels",
                        "what holds the dirty clothes", "where should the socks go"),
                       ("where can I toss my dirty shirt", "what holds the dirty socks", "where should the towels go")),
    "chair": (("where can I sit", "something to sit on", "where could I rest my legs", "what is meant for sitting",
               "where can I sit down", "where could a guest sit", "something to rest on", "where can I take a seat",
               "what could I sit on while I eat", "where could I rest"),
              ("where can a guest take a seat", "something to sit on while I eat", "where could I sit to rest my legs")),
    "table": (("where can I put my plate down", "where would I eat my dinner", "a flat surface to work at",
               "where can I set down the groceries", "where can I put my laptop", "a surface to eat at",
               "where would I work", "where can I set my plate", "where do I put the groceries",
               "a flat surface for my dinner"),
              ("where can I set down my laptop", "a flat surface to eat my dinner at", "where would I put the plate")),
    "waste_bin": (("where should the rubbish go", "where do I throw away this wrapper", "where does the trash go",
                   "something for garbage", "where can I throw the empty can", "where do I put the rubbish",
                   "where should the banana peel go", "something for the trash", "where can I throw away garbage",
                   "where does the wrapper go"),
                  ("where do I throw away this banana peel", "where should the empty can go",
                   "something for the rubbish")),
    "mug": (("something to drink from", "what can I pour coffee into", "what holds my tea", "a cup for a hot drink",
             "what would I drink my morning coffee from", "what can I fill with water", "a cup for tea",
             "something for my coffee", "what holds a hot drink", "what can I pour water into"),
            ("what can I pour tea into", "a cup for my morning coffee", "something to fill with water")),
    "plant": (("what needs watering", "the living thing that needs sunlight", "what grows leaves",
               "something green that grows", "what will wilt if I forget to water it", "what needs some fertiliser",
               "the living thing with green leaves", "what grows in the sunlight", "what needs water to grow",
               "something living that needs care"),
              ("what grows green leaves", "the living thing that needs watering", "something that needs sunlight")),
    "shelf": (("where can I store my books", "where do I put the books away", "what has shelves for storage",
               "where can I display ornaments", "where can I keep my folders", "where would the photo frames stand",
               "where can I put my books", "what can I store ornaments on", "where do the folders go",
               "something with shelves"),
              ("where can I store my folders", "where would the books stand", "where can I display the photo frames")),
}
# Share of training questions about a thing the scene lacks (answered in words, no mask). At 0.15 the model still
# answered 89 % of held-out absent questions with a mask; a quarter of the data makes "not here" worth learning.
ABSENT_SHARE = 0.25
EXPLICIT = {kind: (f"the {colour} {kind.replace('_', ' ')}",) for kind, (colour, _) in KINDS.items()}
KIND_NAMES = list(KINDS)  # probe class = index here
MIN_VISIBLE = 0.012  # a target must cover this share of the frame (partly hidden objects still count)
# Share of 160 x 120 training frames in which each kind covers MIN_VISIBLE (4000 frames of seed 0). With
# `balanced` kinds a question's kind is drawn with weight 1 / rate among the visible kinds and with weight rate
# among the absent ones, so every kind is asked about about as often and none is mostly "not here" (lisa-demo's
# data). Why: with the uniform draw (the lisa-demo shipped before 2026-12-06), the 20 cm mug (big enough only close
# up) was the target of 60 training questions and the absent thing of 326, and the model learned to answer "Sorry"
# to every mug question, visible mugs included.
VISIBLE_RATE = {"laundry_basket": 0.50, "chair": 0.50, "table": 0.80, "waste_bin": 0.42, "mug": 0.037,
                "plant": 0.52, "shelf": 0.57}


def questions(kind: str, held_out: bool) -> tuple[str, ...]:
    return IMPLICIT[kind][1] if held_out else IMPLICIT[kind][0] + EXPLICIT[kind]


def _outlines(mask: np.ndarray) -> list[list[list[float]]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c[:, 0, :].astype(float).tolist() for c in contours if len(c) >= 3]


def make_sample(rng: np.random.Generator, size: tuple[int, int], mode: str,
                balanced: bool = False) -> tuple[np.ndarray, dict]:
    """One frame and its annotation. mode: "train" (training phrasings, ABSENT_SHARE absent-thing questions),
    "val" / "val_heldout" (a visible target; training / held-out phrasings), "val_absent" (absent things)."""
    while True:
        present = [str(k) for k in rng.choice(KIND_NAMES, size=int(rng.integers(3, 6)), replace=False)]
        layout = sample_layout(rng, present)
        intrinsics = SCANNET_COLOR.scaled_to(*size)
        rgb, _, ids, _ = render(intrinsics, layout.poses[0], layout.objects, layout.light, layout.brightness)
        visible = {o.kind: (ids == i + 1) for i, o in enumerate(layout.objects)
                   if (ids == i + 1).mean() >= MIN_VISIBLE}
        placed = {o.kind for o in layout.objects}
        absent = [k for k in KIND_NAMES if k not in placed]
        ask_absent = mode == "val_absent" or (mode == "train" and rng.random() < ABSENT_SHARE)
        if (ask_absent and absent) or (not ask_absent and visible):
            break
    pool = absent if ask_absent else sorted(visible)
    if balanced:
        weight = np.array([VISIBLE_RATE[k] for k in pool]) ** (1 if ask_absent else -1)
        kind = str(rng.choice(pool, p=weight / weight.sum()))
    else:
        kind = str(rng.choice(pool))
    text = [str(q) for q in rng.permutation(questions(kind, held_out=mode == "val_heldout"))]
    shapes = [] if ask_absent else [{"label": "target", "points": p, "shape_type": "polygon"}
                                    for p in _outlines(visible[kind])]
    objects = [{"kind": k, "polygons": _outlines(m)} for k, m in visible.items()]
    return rgb, {"text": text, "is_sentence": True, "shapes": shapes, "kind": kind,
                 "query_kind_index": KIND_NAMES.index(kind),
                 "visible_kind_indices": sorted(KIND_NAMES.index(k) for k in visible), "objects": objects}


def write_split(out: Path, n: int, seed: int, mode: str, size: tuple[int, int], balanced: bool = False) -> None:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rgb, meta = make_sample(rng, size, mode, balanced)
        cv2.imwrite(str(out / f"{i:05d}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        (out / f"{i:05d}.json").write_text(json.dumps(meta))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--train", type=int, default=10000)
    p.add_argument("--val", type=int, default=100)
    p.add_argument("--size", type=int, nargs=2, default=(160, 120), metavar=("W", "H"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--balanced-kinds", action="store_true", help="draw question kinds by VISIBLE_RATE (see there)")
    a = p.parse_args(argv)
    size = tuple(a.size)
    # different seeds: held-out splits are new scenes, never training frames
    for split, n, offset in (("train", a.train, 0), ("val", a.val, 1), ("val_heldout", a.val, 2),
                             ("val_absent", a.val, 3)):
        write_split(Path(a.out) / split, n, a.seed * 10 + offset, split, size, a.balanced_kinds)


if __name__ == "__main__":
    main()
