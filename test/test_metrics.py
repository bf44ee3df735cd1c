"""gIoU / cIoU against the reference's validate() numbers on the fixture's metrics case."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import FIXTURE
from lisa_model.metrics import intersection_union, segmentation_scores

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


def test_per_pair_intersection_and_union():
    _, preds, gts, _, pairs = load_pairs()
    for pred, gt, pair in zip(preds, gts, pairs):
        assert intersection_union(pred, gt) == (pair["area_intersection"][1], pair["area_union"][1]), pair["kind"]


def test_split_scores_match_reference():
    exp, preds, gts, groups, _ = load_pairs()
    scores = segmentation_scores(preds, gts, groups)
    assert scores["giou"] == pytest.approx(exp["giou"], rel=1e-6)
    assert scores["ciou"] == pytest.approx(exp["ciou"], rel=1e-6)
    # Ungrouped (one image per pair) differs only by float32 rounding.
    assert segmentation_scores(preds, gts)["giou"] == pytest.approx(exp["giou"], rel=1e-5)


def test_empty_target_and_ignore_semantics():
    gt = np.zeros((4, 4), np.uint8)
    empty = np.zeros((4, 4), bool)
    assert segmentation_scores([empty], [gt]) == pytest.approx({"giou": 1.0 / (1 + 1e-5), "ciou": 0.0})
    gt[:2] = 255  # ignored rows: a prediction there costs nothing
    pred = np.zeros((4, 4), bool)
    pred[:2] = True
    assert intersection_union(pred, gt) == (0.0, 0.0)
    with pytest.raises(ValueError):
        intersection_union(pred, gt[:3])
