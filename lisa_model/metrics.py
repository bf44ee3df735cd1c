"""ReasonSeg / referring-segmentation metrics with the reference's exact semantics.

Per mask: pred = logits > 0; pixels where the target is 255 are ignored; I and U of the foreground class.
gIoU = mean over masks of I / (U + 1e-5), counting 1.0 where U == 0 (an empty target predicted empty).
cIoU = sum of I / sum of U over the whole split.
The reference accumulates per image in float32 (its AverageMeter); we do the same so numbers agree to float32.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

IGNORE = 255


def intersection_union(pred: np.ndarray, gt: np.ndarray, ignore_index: int = IGNORE) -> tuple[float, float]:
    """Foreground intersection and union (pixels) of a bool HxW prediction and a uint8 HxW target (0/1/255)."""
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and target {gt.shape} differ in shape")
    valid = gt != ignore_index
    p = pred & valid
    t = (gt == 1) & valid
    inter = float(np.count_nonzero(p & t))
    return inter, float(np.count_nonzero(p) + np.count_nonzero(t)) - inter


class SegmentationMeter:
    """Streaming gIoU / cIoU over a split. `add_image` takes all masks of one image (the reference's unit)."""

    def __init__(self) -> None:
        self.intersection = np.float32(0)
        self.union = np.float32(0)
        self.iou_sum = np.float32(0)
        self.count = 0

    def add_image(self, preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> None:
        if len(preds) != len(gts) or not preds:
            raise ValueError(f"need as many predictions as targets (got {len(preds)} and {len(gts)})")
        inter = union = acc = np.float32(0)
        for pred, gt in zip(preds, gts):
            i, u = (np.float32(x) for x in intersection_union(pred, gt))
            inter, union = inter + i, union + u
            acc = acc + (np.float32(1.0) if u == 0 else i / (u + np.float32(1e-5)))
        n = len(preds)
        self.intersection += inter
        self.union += union
        self.iou_sum += np.float32(acc / np.float32(n)) * np.float32(n)
        self.count += n

    def scores(self) -> dict[str, float]:
        giou = float(self.iou_sum) / (self.count + 1e-5)
        ciou = float(self.intersection) / (float(self.union) + 1e-10)
        return {"giou": giou, "ciou": ciou}


def segmentation_scores(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                        groups: Sequence[int] | None = None) -> dict[str, float]:
    """{"giou", "ciou"} of bool HxW predictions against uint8 HxW targets (1 target, 0 background, 255 ignore).

    groups: image index of each pair (masks of one image are accumulated together, as the reference does);
    default: every pair is its own image. Grouping changes the result only by float32 rounding.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} targets")
    groups = list(range(len(preds))) if groups is None else list(groups)
    meter = SegmentationMeter()
    for g in dict.fromkeys(groups):
        idx = [k for k, x in enumerate(groups) if x == g]
        meter.add_image([preds[k] for k in idx], [gts[k] for k in idx])
    return meter.scores()
