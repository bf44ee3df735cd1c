"""Query-blind baselines on synthetic ReasonSeg splits (training.synthetic): what a model that ignores the query
can score, so that a trained model's gIoU can be read as "the query reached the mask" only when it beats them.

    python -m training.baselines DATA/val [--limit 100] [--seed 0]

The synthetic JSON carries every object's polygon (`objects`), so the baselines are computed from metadata:

* largest object: the object with the most pixels (rasterised as the ground truth is);
* random object: one object per scene drawn with a seeded RNG, and its expectation over the draw (gIoU only:
  the mean over scenes of the mean IoU over that scene's objects);
* all objects: the union of every object.

Scored with lisa_model.metrics.segmentation_scores against the same ground truth lisa-eval reads (text[0] of
each file, first `limit` files in name order), so the numbers compare directly with `lisa-eval` / evaluate_samples.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from lisa_model.metrics import intersection_union, segmentation_scores

from .data.reason_seg import rasterize, scan
from .data.sample import read_rgb

BASELINES = ("largest_object", "random_object", "all_objects")


def object_masks(annotation: dict, height: int, width: int) -> list[np.ndarray]:
    """bool HxW per object of a synthetic scene, rasterised exactly like the ReasonSeg ground truth."""
    objects = annotation.get("objects")
    if not objects:
        raise ValueError("no `objects` in the annotation: baselines need training.synthetic data")
    # an object is one polygon ("points", training.synthetic) or several ("polygons": training.household, where a
    # partly hidden chair shows as separate pieces)
    return [rasterize([{"label": "target", "points": pts} for pts in o.get("polygons", [o.get("points")])],
                      height, width) == 1 for o in objects]


def baseline_scores(folder: str | Path, limit: int | None = None, seed: int = 0) -> dict[str, dict[str, float]]:
    """{baseline: {"giou", "ciou"}} over the first `limit` scenes of `folder` (lisa-eval's order), plus
    "random_object_expected": {"giou"} and "best": the name and gIoU of the strongest baseline."""
    rng = np.random.default_rng(seed)
    preds: dict[str, list[np.ndarray]] = {b: [] for b in BASELINES}
    gts, expected = [], []
    for rec in scan(folder)[:limit]:
        image = read_rgb(rec.image_path)
        h, w = image.shape[:2]
        gt = rasterize(rec.annotation.get("shapes", []), h, w, source=str(rec.image_path))
        masks = object_masks(rec.annotation, h, w)
        gts.append(gt)
        preds["largest_object"].append(masks[int(np.argmax([m.sum() for m in masks]))])
        preds["random_object"].append(masks[int(rng.integers(len(masks)))])
        preds["all_objects"].append(np.logical_or.reduce(masks))
        ious = []
        for m in masks:
            i, u = intersection_union(m, gt)
            ious.append(1.0 if u == 0 else i / (u + 1e-5))
        expected.append(float(np.mean(ious)))
    out: dict = {b: segmentation_scores(preds[b], gts) for b in BASELINES}
    out["random_object_expected"] = {"giou": float(np.mean(expected)) if expected else 0.0}
    best = max(("largest_object", "random_object_expected", "all_objects"), key=lambda b: out[b]["giou"])
    out["best"] = {"name": best, "giou": out[best]["giou"]}
    out["n"] = len(gts)
    return out


def format_table(scores: dict) -> str:
    lines = ["| query-blind baseline | gIoU | cIoU |", "|---|---|---|"]
    for b in (*BASELINES, "random_object_expected"):
        s = scores[b]
        ciou = f"{s['ciou']:.4f}" if "ciou" in s else "-"
        lines.append(f"| {b} | {s['giou']:.4f} | {ciou} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Query-blind baselines of a synthetic ReasonSeg split.")
    p.add_argument("data", help="split folder written by training.synthetic (e.g. OUT/val)")
    p.add_argument("--limit", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    scores = baseline_scores(a.data, a.limit, a.seed)
    print(json.dumps(scores, indent=2) if a.json else
          f"{format_table(scores)}\n\nbest: {scores['best']['name']} gIoU {scores['best']['giou']:.4f} "
          f"(n={scores['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
