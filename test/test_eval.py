"""`lisa-eval`: the generation protocol, the report it writes, and the command line.

Model: the reference fixture's tiny checkpoint (random weights that often answer with [SEG]); data: a small
ReasonSeg-format split of the fixture's images, whose queries make it answer with masks and without.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from conftest import FIXTURE, read_rgb
from lisa_model import LisaSegmenter
from lisa_model.metrics import intersection_union, segmentation_scores
from training.evaluate import PROTOCOLS, eval_question, evaluate_samples, load_items, main as lisa_eval

CLIP = FIXTURE / "tiny-clip-vit"
# (image case, query, is_sentence): on this checkpoint the first and third answers hold [SEG]s, the second and
# fourth none (the test checks that both kinds are present rather than trusting this list).
QUERIES = [("case3_96x128", "the dog", False), ("case3_96x128", "where would I put the clothes", True),
           ("case3_96x128", "the food with most vitamin C", True), ("case1_640x480", "the dog", False)]


@pytest.fixture(scope="module")
def segmenter():
    return LisaSegmenter.from_pretrained(FIXTURE / "tiny-lisa", vision_tower=CLIP)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """ReasonSeg files: NAME.jpg + NAME.json (text, is_sentence, a target polygon and an ignored one)."""
    root = tmp_path_factory.mktemp("reason_seg") / "val"
    root.mkdir()
    for i, (case, query, sentence) in enumerate(QUERIES):
        image = read_rgb(FIXTURE / "cases" / case / "image.png")
        h, w = image.shape[:2]
        cv2.imwrite(str(root / f"{i:03d}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        box = [[w * 0.2, h * 0.2], [w * 0.7, h * 0.25], [w * 0.6, h * 0.8], [w * 0.25, h * 0.7]]
        corner = [[0, 0], [w * 0.1, 0], [w * 0.1, h * 0.1], [0, h * 0.1]]
        (root / f"{i:03d}.json").write_text(json.dumps({"text": [query], "is_sentence": sentence, "shapes": [
            {"label": "target", "points": box}, {"label": "ignore", "points": corner}]}))
    return root


def test_generation_protocol_scores_the_first_mask(segmenter, split):
    items = load_items(split)
    answers = [segmenter.segment(it.image, eval_question(it.query, it.is_sentence), max_new_tokens=32)
               for it in items]
    assert {len(a.masks) > 0 for a in answers} == {True, False}  # answers with masks and without
    # The prediction is the first [SEG]'s mask; an answer without [SEG] predicts nothing.
    expected = [a.masks[0] if len(a.masks) else np.zeros(it.gt.shape, bool) for a, it in zip(answers, items)]
    got = evaluate_samples(segmenter, items, "generation", keep_predictions=True)
    assert len(got["per_item"]) == len(items) == got["n"]
    for row, pred, it in zip(got["per_item"], expected, items):
        np.testing.assert_array_equal(row["pred"], pred)
        i, u = intersection_union(pred, it.gt)
        assert row["iou"] == pytest.approx(i / u if u else 1.0)
    assert (items[0].gt == 255).any()  # the "ignore" polygon reaches the metric
    reference = segmentation_scores(expected, [it.gt for it in items])
    assert (got["giou"], got["ciou"]) == (reference["giou"], reference["ciou"])
    short = [k for k, it in enumerate(items) if not it.is_sentence]
    assert got["short"]["n"] == len(short) and got["long"]["n"] == len(items) - len(short)
    assert got["short"]["giou"] == segmentation_scores([expected[k] for k in short],
                                                       [items[k].gt for k in short])["giou"]


def test_lisa_eval_command_writes_the_report(segmenter, split, tmp_path, capsys):
    out = tmp_path / "report"
    assert lisa_eval(["--model", str(FIXTURE / "tiny-lisa"), "--vision-tower", str(CLIP), "--data", str(split),
                      "--protocol", "both", "--limit", "3", "--out", str(out)]) == 0
    items = load_items(split, 3)
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["n"] == 3 and set(report["scores"]) == set(PROTOCOLS)
    markdown = (out / "report.md").read_text()
    assert markdown in capsys.readouterr().out  # printed too
    for protocol in PROTOCOLS:
        expected = evaluate_samples(segmenter, items, protocol)
        scores = report["scores"][protocol]
        assert (scores["n"], scores["giou"], scores["ciou"]) == (3, expected["giou"], expected["ciou"])
        assert [r["iou"] for r in report["per_item"][protocol]] == [r["iou"] for r in expected["per_item"]]
        assert f"| {protocol} | overall | 3 | {expected['giou']:.4f} | {expected['ciou']:.4f} |" in markdown
        # overlays of the best and worst cases (all three, each way)
        for tag in ("best", "worst"):
            shots = sorted(out.glob(f"{protocol}_{tag}_*.png"))
            assert len(shots) == 3
            assert cv2.imread(str(shots[0])).shape[:2] in {it.image.shape[:2] for it in items}



def test_lisa_eval_takes_any_family(split, tmp_path):
    """The same command on a UGround release (its own prompts, padded CLIP): recognised, reported, scored the same
    as the library scores it."""
    from lisa_model import LisaSegmenter

    folder = FIXTURE.parent / "uground_tiny_reference"
    args = ["--model", str(folder / "tiny-uground"), "--vision-tower", str(folder / "tiny-clip-vit-336")]
    out = tmp_path / "report"
    assert lisa_eval([*args, "--data", str(split), "--protocol", "teacher_forced", "--limit", "2",
                      "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["family"] == "uground"
    seg = LisaSegmenter.from_pretrained(folder / "tiny-uground", vision_tower=folder / "tiny-clip-vit-336")
    expected = evaluate_samples(seg, load_items(split, 2), "teacher_forced")
    assert report["scores"]["teacher_forced"]["giou"] == expected["giou"]
