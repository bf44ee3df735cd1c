"""ReasonSeg / referring-segmentation metrics with the reference's exact semantics (train_ds.py validate()).

Per mask: pred = logits > 0; pixels where the target is 255 are ignored; intersection I and union U of the
foreground class (target value 1).
gIoU = mean over masks of I / (U + 1e-5), counting 1.0 where U == 0 (an empty target predicted empty).
cIoU = sum of I / sum of U over the whole split.

Per-image grouping (what validate() does, one data-loader item = one image with all of its masks):
  * an image's I and U are summed over its masks, and that per-image float32 sum is added to split totals;
  * an image's gIoU contribution is acc = sum over its masks of I/(U+1e-5) (+1.0 where U == 0); the split
    accumulator adds (acc / n) * n and counts n masks, so every mask weighs the same, whatever its image.
  ReasonSeg val/test items are one image with one query (text[0]), so there an image is a mask. Referring
  validation puts every sentence of an image in one item, so its masks form one group.
Grouping only changes float32 rounding: the reference's sums are float32 (torch turns `0.0 + int tensor` into
float32, and its AverageMeter keeps adding float32 arrays), accumulated image after image in loader order, and
the final divisions are float32 too. We reproduce that arithmetic, so results agree bit for bit, including on
splits whose pixel totals exceed 2**24 (where float32 sums start rounding).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

IGNORE = 255
_F32 = np.float32


def intersection_union(pred: np.ndarray, gt: np.ndarray, ignore_index: int = IGNORE) -> tuple[int, int]:
    """(I, U) in pixels of the foreground class for a bool HxW prediction and a uint8 HxW target.

    Target values: 1 foreground, 255 (ignore_index) ignored, anything else background. As the reference's
    intersectionAndUnionGPU (K=2): ignored pixels leave both prediction and target; a target value outside
    {0, 1, ignore} (e.g. a 2 where REFER polygon parts overlap) counts as background.
    """
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and target {gt.shape} differ in shape")
    valid = gt != ignore_index
    p = pred & valid
    t = gt == 1
    inter = int(np.count_nonzero(p & t))
    return inter, int(np.count_nonzero(p)) + int(np.count_nonzero(t)) - inter


def mask_iou_term(intersection: int, union: int) -> np.float32:
    """One mask's gIoU term in float32, as the reference: I / (U + 1e-5), plus 1.0 when U == 0."""
    term = _F32(intersection) / (_F32(union) + _F32(1e-5))
    return term + _F32(1.0) if union == 0 else term


class SegmentationMeter:
    """Streaming gIoU / cIoU over a split, one image at a time (see the module doc for the grouping).

    Use: meter.add_image(preds, gts) per image, in evaluation order; meter.scores() at the end.
    """

    def __init__(self) -> None:
        self.intersection = _F32(0)  # float32 running sums, as the reference's AverageMeters
        self.union = _F32(0)
        self.iou_sum = _F32(0)
        self.count = 0  # masks seen

    def add_image(self, preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> dict[str, float]:
        """All masks of one image: bool HxW predictions and their uint8 HxW targets, in pairs.

        Returns the image's {"intersection", "union", "acc_iou"} (acc_iou = mean gIoU term of its masks).
        """
        if len(preds) != len(gts) or not preds:
            raise ValueError(f"need as many predictions as targets, at least one (got {len(preds)}, {len(gts)})")
        inter = union = acc = _F32(0)
        for pred, gt in zip(preds, gts):
            i, u = intersection_union(pred, gt)
            inter, union = inter + _F32(i), union + _F32(u)
            acc = acc + mask_iou_term(i, u)
        n = len(preds)
        mean_acc = acc / _F32(n)
        self.intersection = self.intersection + inter
        self.union = self.union + union
        self.iou_sum = self.iou_sum + mean_acc * _F32(n)
        self.count += n
        return {"intersection": float(inter), "union": float(union), "acc_iou": float(mean_acc)}

    def scores(self) -> dict[str, float]:
        """{"giou", "ciou"}: float32 quotients, as the reference computes them (returned as Python floats)."""
        giou = self.iou_sum / _F32(self.count + 1e-5)
        ciou = self.intersection / (self.union + _F32(1e-10))
        return {"giou": float(giou), "ciou": float(ciou)}


def segmentation_scores(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                        groups: Sequence[int] | None = None) -> dict[str, float]:
    """{"giou", "ciou"} of bool HxW predictions against uint8 HxW targets (1 target, 0 background, 255 ignore).

    groups: image index of each pair; pairs with the same index form one image (in order of first appearance),
    as validate() groups a referring image's sentences. Default: every pair is its own image (ReasonSeg).
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} targets")
    groups = list(range(len(preds))) if groups is None else list(groups)
    if len(groups) != len(preds):
        raise ValueError(f"{len(groups)} group indices for {len(preds)} pairs")
    members: dict[int, list[int]] = {}
    for k, g in enumerate(groups):
        members.setdefault(g, []).append(k)
    meter = SegmentationMeter()
    for idx in members.values():
        meter.add_image([preds[k] for k in idx], [gts[k] for k in idx])
    return meter.scores()
