"""Mask losses: the reference's formulas on hand-computable tensors, and a cross-check on the train fixture.

What the fixture allows: train_case stores the reference's float32 losses, the per-mask logit sums at full
resolution, and the logits only at stride 4 (`pred_mask_logits_stride4_<img>` = logits[:, ::4, ::4]). Stride-4
samples all hit one phase of the mask decoder's 4x4 upsampling pattern, so their mean is biased (-0.183 against
the true -0.149 on image 0): losses on them are ~1% off. Shifting each mask's samples to the true mean (from
`pred_mask_logit_sums`) brings BCE within 5e-4 and DICE within 3e-3 (relative) of the reference - enough to tell
the reference's per-mask weighting from a per-image one (0.6% / 1.8% away). The exact end-to-end check of these
losses is the training-forward test on the full model.
"""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import FIXTURE
from lisa_model.losses import combine_losses, dice_loss, mask_losses, opening_token_ce, sigmoid_bce_loss

TRAIN = FIXTURE / "train_case"


def test_bce_is_a_per_mask_pixel_mean_summed_over_masks():
    logits = torch.zeros(2, 3, 4, dtype=torch.float64)
    targets = torch.zeros(2, 3, 4, dtype=torch.float64)
    # BCE(0, t) = log 2 for any t: each mask's mean is log 2; summed over 2 masks / (2 + 1e-8).
    assert sigmoid_bce_loss(logits, targets, 2).item() == pytest.approx(2 * math.log(2) / (2 + 1e-8), rel=1e-15)
    logits[1] = 3.0
    targets[1, 0] = 1.0  # 4 of 12 pixels positive
    m1 = (4 * math.log1p(math.exp(-3.0)) + 8 * (3.0 + math.log1p(math.exp(-3.0)))) / 12
    assert sigmoid_bce_loss(logits, targets, 2).item() == pytest.approx((math.log(2) + m1) / (2 + 1e-8), rel=1e-12)


def test_dice_scale_and_eps_as_the_reference():
    logits = torch.zeros(1, 2, 2, dtype=torch.float64)  # p = 0.5 everywhere
    targets = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    num, den = 2 * 0.5 / 1000 + 1e-6, (4 * 0.5 + 1) / 1000 + 1e-6
    assert dice_loss(logits, targets, 1).item() == pytest.approx((1 - num / den) / (1 + 1e-8), rel=1e-12)
    # An empty target: only eps is left in the numerator, so the scale decides the value.
    empty = torch.zeros_like(targets)
    assert dice_loss(logits, empty, 1).item() == pytest.approx(1 - 1e-6 / (2 / 1000 + 1e-6), rel=1e-7)
    assert dice_loss(logits, empty, 1, scale=1.0).item() == pytest.approx(1 - 1e-6 / (2 + 1e-6), rel=1e-7)
    # A perfect, confident prediction costs ~0.
    assert dice_loss(torch.full((1, 2, 2), 40.0, dtype=torch.float64), torch.ones(1, 2, 2, dtype=torch.float64),
                     1).item() == pytest.approx(0.0, abs=1e-12)


def per_mask(pred, gt):
    return ([sigmoid_bce_loss(p[None], g[None], 1).item() for p, g in zip(pred, gt)],
            [dice_loss(p[None], g[None], 1).item() for p, g in zip(pred, gt)])


def test_every_mask_weighs_the_same_across_images():
    g = torch.Generator().manual_seed(0)
    preds = [torch.randn(2, 5, 6, generator=g, dtype=torch.float64),
             torch.randn(1, 4, 3, generator=g, dtype=torch.float64) * 3,
             torch.zeros(0, 7, 7, dtype=torch.float64)]  # a VQA item: no mask, no weight
    gts = [(torch.rand(2, 5, 6, generator=g) > 0.5).double(), (torch.rand(1, 4, 3, generator=g) > 0.3).double(),
           torch.zeros(0, 7, 7, dtype=torch.float64)]
    bce, dice = [], []
    for p, t in zip(preds[:2], gts[:2]):
        b, d = per_mask(p, t)
        bce += b
        dice += d
    out = mask_losses(preds, gts, bce_weight=2.0, dice_weight=0.5)
    assert out["mask_bce_loss"].item() == pytest.approx(2.0 * sum(bce) / 3, rel=1e-9)
    assert out["mask_dice_loss"].item() == pytest.approx(0.5 * sum(dice) / 3, rel=1e-9)
    assert out["mask_loss"].item() == pytest.approx(out["mask_bce_loss"].item() + out["mask_dice_loss"].item())
    # uint8 / bool targets are accepted (converted to the logits' dtype)
    assert mask_losses(preds[:1], [gts[0].to(torch.uint8)])["mask_bce_loss"].item() == pytest.approx(
        2.0 * sum(bce[:2]) / 2, rel=1e-9)


def test_no_mask_in_the_batch_gives_zero_and_gradients_flow():
    out = mask_losses([torch.zeros(0, 4, 4)], [torch.zeros(0, 4, 4)])
    assert out["mask_loss"].item() == 0.0
    assert mask_losses([], [])["mask_loss"].item() == 0.0
    logits = torch.zeros(1, 3, 3, requires_grad=True)
    mask_losses([logits], [torch.ones(1, 3, 3)])["mask_loss"].backward()
    assert logits.grad is not None and (logits.grad < 0).all()  # pushes towards the positive target
    with pytest.raises(ValueError):
        mask_losses([torch.zeros(1, 3, 3)], [torch.zeros(1, 3, 4)])


def test_combine_reproduces_the_reference_float32_sums():
    ref = json.loads((TRAIN / "expected.json").read_text())["losses_float32_reference"]
    f32 = lambda k: torch.tensor(ref[k], dtype=torch.float32)  # noqa: E731
    masks = {"mask_bce_loss": f32("mask_bce_loss"), "mask_dice_loss": f32("mask_dice_loss")}
    masks["mask_loss"] = masks["mask_bce_loss"] + masks["mask_dice_loss"]
    out = combine_losses(f32("ce_loss"), masks, ce_weight=1.0)
    assert {k: v.item() for k, v in out.items()} == ref  # bit for bit: same float32 additions in the same order
    assert combine_losses(torch.tensor(2.0), masks, ce_weight=0.5)["ce_loss"].item() == 1.0


def fixture_masks():
    exp = json.loads((TRAIN / "expected.json").read_text())
    logits = load_file(str(TRAIN / "expected.safetensors"))
    preds, gts = [], []
    for i, image in enumerate(exp["images"]):
        gt = np.stack([np.asarray(Image.open(TRAIN / name)) > 0 for name in image["gt_masks"]])
        sub = logits[f"pred_mask_logits_stride4_{i}"].double()
        true_mean = torch.tensor(exp["pred_mask_logit_sums"][i], dtype=torch.float64) / gt[0].size
        preds.append(sub + (true_mean - sub.mean((1, 2)))[:, None, None])  # undo the phase bias of ::4
        gts.append(torch.from_numpy(gt[:, ::4, ::4].astype(np.float64)))
    return exp, preds, gts


def test_fixture_losses_from_stride4_logits():
    exp, preds, gts = fixture_masks()
    ref = exp["losses_float32_reference"]
    out = mask_losses(preds, gts, **{"bce_weight": 2.0, "dice_weight": 0.5})
    assert out["mask_bce_loss"].item() == pytest.approx(ref["mask_bce_loss"], rel=1e-3)
    assert out["mask_dice_loss"].item() == pytest.approx(ref["mask_dice_loss"], rel=5e-3)
    # Weighting each image equally (a plausible mistake) is clearly further away.
    per_image_bce = 2.0 * np.mean([np.mean(per_mask(p, g)[0]) for p, g in zip(preds, gts)])
    per_image_dice = 0.5 * np.mean([np.mean(per_mask(p, g)[1]) for p, g in zip(preds, gts)])
    assert abs(per_image_bce / ref["mask_bce_loss"] - 1) > 4e-3
    assert abs(per_image_dice / ref["mask_dice_loss"] - 1) > 1.5e-2


def test_opening_token_ce_is_each_answers_first_token_alone():
    """Rows' first supervised tokens (predicted one position earlier), averaged over rows; an unsupervised row is
    left out, and no supervised row gives 0 with a graph."""
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 10, requires_grad=True)
    labels = torch.full((3, 6), -100)
    labels[0, 2:] = torch.tensor([4, 5, 6, 7])  # answer opens at 2
    labels[2, 4:] = torch.tensor([9, 1])  # at 4; row 1 has no answer
    loss = opening_token_ce(logits, labels)
    by_hand = (torch.nn.functional.cross_entropy(logits[0, 1:2], labels[0, 2:3])
               + torch.nn.functional.cross_entropy(logits[2, 3:4], labels[2, 4:5])) / 2
    assert torch.allclose(loss, by_hand)
    loss.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0, 1].abs().sum() > 0 and logits.grad[0, 2].abs().sum() == 0
    none = opening_token_ce(logits, torch.full((3, 6), -100))
    assert none.item() == 0 and none.requires_grad
