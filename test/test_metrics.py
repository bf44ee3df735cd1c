"""gIoU / cIoU against the reference's validate() numbers on the fixture's metrics case."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import FIXTURE
from lisa_model.metrics import SegmentationMeter, intersection_union, mask_iou_term, segmentation_scores

CASE = FIXTURE / "metrics_case"


def load_pairs():
    exp = json.loads((CASE / "expected.json").read_text())
    preds, gts, groups, pairs = [], [], [], []
    for g, image in enumerate(exp["images"]):
        for pair in image["pairs"]:
            preds.append(np.asarray(Image.open(CASE / pair["pred_png"])) == 1)
            gts.append(np.asarray(Image.open(CASE / pair["gt_png"])))
            groups.append(g)
            pairs.append(pair)
    return exp, preds, gts, groups, pairs


def f32(x) -> float:
    return float(np.float32(x))


def test_per_pair_intersection_union_and_term():
    _, preds, gts, _, pairs = load_pairs()
    for pred, gt, pair in zip(preds, gts, pairs):
        i, u = intersection_union(pred, gt)
        assert (i, u) == (pair["area_intersection"][1], pair["area_union"][1]), pair["kind"]
        assert float(mask_iou_term(i, u)) == f32(pair["acc_iou_contrib"][1]), pair["kind"]


def test_per_image_and_split_scores_are_bit_exact():
    exp, preds, gts, groups, _ = load_pairs()
    meter = SegmentationMeter()
    for g, image in enumerate(exp["images"]):
        idx = [k for k, x in enumerate(groups) if x == g]
        got = meter.add_image([preds[k] for k in idx], [gts[k] for k in idx])
        assert got["intersection"] == image["image_intersection"][1]
        assert got["union"] == image["image_union"][1]
        assert got["acc_iou"] == f32(image["image_acc_iou"][1])
    assert float(meter.iou_sum) == f32(exp["acc_iou_sum"][1]) and meter.count == exp["acc_iou_count"]
    assert float(meter.intersection) == exp["intersection_sum"][1] and float(meter.union) == exp["union_sum"][1]
    # The fixture stores the reference's float32 results printed as float64: equal to the last bit.
    assert meter.scores() == {"giou": exp["giou"], "ciou": exp["ciou"]}
    assert segmentation_scores(preds, gts, groups) == {"giou": exp["giou"], "ciou": exp["ciou"]}


def test_grouping_changes_only_rounding():
    exp, preds, gts, _, _ = load_pairs()
    ungrouped = segmentation_scores(preds, gts)
    assert ungrouped["giou"] == pytest.approx(exp["giou"], rel=1e-6)
    assert ungrouped["ciou"] == exp["ciou"]  # integer sums below 2**24: exact either way


def test_empty_target_and_ignore_semantics():
    gt = np.zeros((4, 4), np.uint8)
    empty = np.zeros((4, 4), bool)
    # Empty target predicted empty: U == 0 counts 1.0 (0 / 1e-5 + 1.0); cIoU 0 / (0 + 1e-10) = 0.
    assert segmentation_scores([empty], [gt]) == {"giou": f32(np.float32(1) / np.float32(1 + 1e-5)), "ciou": 0.0}
    gt[:2] = 255  # ignored rows: a prediction there costs nothing
    pred = np.zeros((4, 4), bool)
    pred[:2] = True
    assert intersection_union(pred, gt) == (0, 0)
    gt[3, 3] = 1
    pred[3, 2] = True
    assert intersection_union(pred, gt) == (0, 2)  # one false positive + one missed pixel
    gt[3, 2] = 2  # values other than 0/1/255 are background (refer masks where polygon parts overlap)
    assert intersection_union(pred, gt) == (0, 2)
    with pytest.raises(ValueError):
        intersection_union(pred, gt[:3])
    with pytest.raises(ValueError):
        segmentation_scores([pred], [gt], groups=[0, 1])


def test_float32_accumulation_past_2_to_the_24():
    # Past 2**24 float32 sums round; the reference's AverageMeter sums in float32 image after image, and so do we.
    meter = SegmentationMeter()
    big = np.ones((4100, 4100), bool)  # 16.81 M pixels, all foreground
    gt = np.ones((4100, 4100), np.uint8)
    meter.add_image([big], [gt])
    meter.add_image([big[:1, :3]], [gt[:1, :3]])
    total = np.float32(np.float32(4100 * 4100) + np.float32(3))
    assert float(meter.union) == float(total) != 4100 * 4100 + 3
