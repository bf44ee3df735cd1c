"""Acceptance: the released-layout tiny checkpoint reproduces the reference implementation's outputs.

Fixture: test/fixtures/lisa_tiny_reference (random tiny weights; produced by the reference code in float32).
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import FIXTURE, read_rgb
from lisa_model import LisaSegmenter

CASES = sorted(p for p in (FIXTURE / "cases").iterdir() if p.is_dir())
# Two bounds. Acceptance (the fixture's suggestion): logits within 1e-3, a handful of pixels flipped. Regression
# (what we measure in float32, with room): mask logits 3.6e-7 off (stride-4 samples and fixed coordinates), the
# [SEG] embeddings 3.3e-7, no pixel flipped - a 100x loss of precision fails here while passing acceptance.
REGRESSION_ATOL = 1e-5


@pytest.fixture(scope="module")
def segmenter():
    return LisaSegmenter.from_pretrained(FIXTURE / "tiny-lisa", vision_tower=FIXTURE / "tiny-clip-vit")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_matches_reference(segmenter, case):
    exp = json.loads((case / "expected.json").read_text())
    tensors = load_file(case / "expected.safetensors")
    image = read_rgb(case / "image.png")
    result = segmenter.segment(image, exp["instruction"], max_new_tokens=exp["max_new_tokens"])

    assert exp["conv_type"] == segmenter.model.config.conv_template
    assert result.input_ids == exp["input_ids"]
    assert result.output_ids == exp["generated_ids"]
    assert result.text == exp["decoded_generated"]
    n, h, w = exp["pred_masks_shape"]
    assert result.mask_logits.shape == (n, h, w) and result.masks.shape == (n, h, w)
    assert result.masks.dtype == bool and result.mask_logits.dtype == np.float32
    if n == 0:
        return
    np.testing.assert_allclose(result.mask_logits[:, ::4, ::4], tensors["pred_mask_logits_stride4"].numpy(),
                               atol=1e-3, rtol=0)
    if "pred_mask_logits_full" in tensors:
        np.testing.assert_allclose(result.mask_logits, tensors["pred_mask_logits_full"].numpy(), atol=1e-3, rtol=0)
    for k, stats in enumerate(exp["masks"]):
        logits = result.mask_logits[k].astype(np.float64)
        assert logits.sum() == pytest.approx(stats["sum"], rel=1e-6, abs=1e-3)
        ys, xs = np.array(exp["fixed_coords_yx"]).T
        np.testing.assert_allclose(logits[ys, xs], stats["values_at_coords"], atol=1e-3)
        reference_mask = np.asarray(Image.open(case / f"pred_mask_{k}.png")) > 0
        # logits within 1e-3 may still flip pixels sitting right at 0; allow a handful.
        assert (reference_mask != result.masks[k]).sum() <= 5
        # regression bounds
        np.testing.assert_allclose(logits[ys, xs], stats["values_at_coords"], atol=REGRESSION_ATOL, rtol=0)
        assert (reference_mask != result.masks[k]).sum() == 0
    np.testing.assert_allclose(result.mask_logits[:, ::4, ::4], tensors["pred_mask_logits_stride4"].numpy(),
                               atol=REGRESSION_ATOL, rtol=0)


def test_seg_embeddings_match_reference(segmenter):
    """The [SEG] embedding is taken from the state BEFORE each [SEG] (the reference's offset)."""
    case = FIXTURE / "cases" / "case2_333x500"
    exp = json.loads((case / "expected.json").read_text())
    tensors = load_file(case / "expected.safetensors")
    model = segmenter.model
    image = read_rgb(case / "image.png")
    feats = segmenter.set_image(image)
    ids = torch.tensor([exp["input_ids"] + exp["generated_ids"]])
    with torch.no_grad():
        states = model.forced_states(ids, feats.clip_tokens)[0]
        positions = model.seg_state_positions(ids)[0]
        seg = model.seg_projection(states[positions])
    assert positions.tolist() == exp["seg_hidden_positions"]
    np.testing.assert_allclose(seg.numpy(), tensors["seg_embeddings"].numpy(), atol=REGRESSION_ATOL, rtol=0)


def test_explain_mode_reproduces_case3(segmenter, tmp_path):
    """Case 3's instruction is a query plus the explanatory suffix: `explain=True` must build exactly it."""
    from lisa_model.cli import main as lisa_segment
    from lisa_model.predictor import EXPLAIN_SUFFIX

    case = FIXTURE / "cases" / "case3_96x128"
    exp = json.loads((case / "expected.json").read_text())
    query = exp["instruction"].removesuffix(" " + EXPLAIN_SUFFIX)
    assert query != exp["instruction"]
    image = read_rgb(case / "image.png")
    result = segmenter.segment(image, query, max_new_tokens=exp["max_new_tokens"], explain=True)
    assert result.input_ids == exp["input_ids"]
    assert result.output_ids == exp["generated_ids"] and result.text == exp["decoded_generated"]
    assert result.masks.shape == (0, *image.shape[:2])
    plain = segmenter.segment(image, query, max_new_tokens=1)
    assert plain.input_ids != exp["input_ids"]  # without the flag the suffix is not there
    again = segmenter.segment(image, exp["instruction"], max_new_tokens=1, explain=True)
    assert again.input_ids == exp["input_ids"]  # the suffix is never doubled
    # the command line's --explain
    assert lisa_segment(["--model", str(FIXTURE / "tiny-lisa"), "--vision-tower", str(FIXTURE / "tiny-clip-vit"),
                         "--max-new-tokens", str(exp["max_new_tokens"]), "--explain", "--out", str(tmp_path),
                         str(case / "image.png"), query]) == 0
    summary = json.loads((tmp_path / "image_result.json").read_text())
    assert summary["input_ids"] == exp["input_ids"] and summary["output_ids"] == exp["generated_ids"]
    assert summary["num_masks"] == 0


def test_kv_cache_and_full_recompute_agree(segmenter):
    case = FIXTURE / "cases" / "case1_640x480"
    image = read_rgb(case / "image.png")
    a = segmenter.segment(image, "Describe the image briefly.", max_new_tokens=24, use_cache=True)
    b = segmenter.segment(image, "Describe the image briefly.", max_new_tokens=24, use_cache=False)
    assert a.output_ids == b.output_ids
    np.testing.assert_allclose(a.mask_logits, b.mask_logits, atol=1e-5)
