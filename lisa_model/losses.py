"""LISA's training losses: token cross-entropy + per-mask BCE + DICE, weighted as the reference does.

Masks are compared at the original image size. BCE and DICE are averaged per mask, and each batch item's mean
is weighted by its mask count before dividing by the total mask count (so every mask counts the same).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-8


def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """logits, targets: [n, H, W] -> sum over masks of the pixel-mean BCE, / (num_masks + 1e-8)."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.flatten(1).mean(1).sum() / (num_masks + _EPS)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float, scale: float = 1000.0,
              eps: float = 1e-6) -> torch.Tensor:
    """logits, targets: [n, H, W] -> sum over masks of 1 - DICE(sigmoid(logits), targets), / (num_masks + 1e-8).

    The reference divides both terms by `scale` before summing (keeps float16 sums in range); kept for parity.
    """
    p = logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    numerator = 2 * (p / scale * t).sum(-1)
    denominator = (p / scale).sum(-1) + (t / scale).sum(-1)
    return (1 - (numerator + eps) / (denominator + eps)).sum() / (num_masks + _EPS)


def mask_losses(pred_masks: list[torch.Tensor], gt_masks: list[torch.Tensor], bce_weight: float = 2.0,
                dice_weight: float = 0.5) -> dict[str, torch.Tensor]:
    """pred_masks[i], gt_masks[i]: [n_i, H_i, W_i] logits / 0-1 targets of batch item i.

    Returns the weighted mask_bce_loss, mask_dice_loss and their sum mask_loss.
    """
    bce = dice = 0.0
    total = 0
    for pred, gt in zip(pred_masks, gt_masks, strict=True):
        if pred.shape != gt.shape:
            raise ValueError(f"predicted masks {tuple(pred.shape)} and targets {tuple(gt.shape)} differ")
        n = gt.shape[0]
        gt = gt.to(pred.dtype)
        bce = bce + sigmoid_bce_loss(pred, gt, n) * n
        dice = dice + dice_loss(pred, gt, n) * n
        total += n
    bce = bce_weight * bce / (total + _EPS)
    dice = dice_weight * dice / (total + _EPS)
    if not isinstance(bce, torch.Tensor):  # no masks at all in the batch (e.g. VQA only)
        ref = pred_masks[0] if pred_masks else torch.zeros(())
        bce = dice = ref.new_zeros(())
    return {"mask_bce_loss": bce, "mask_dice_loss": dice, "mask_loss": bce + dice}


def combine_losses(ce: torch.Tensor, masks: dict[str, torch.Tensor], ce_weight: float = 1.0) -> dict:
    """loss = ce_weight * CE + mask_loss, plus every part for logging."""
    ce_loss = ce * ce_weight
    return {"loss": ce_loss + masks["mask_loss"], "ce_loss": ce_loss, **masks}
