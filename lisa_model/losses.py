"""LISA's training losses: token cross-entropy + per-mask BCE + DICE, weighted as the reference (model/LISA.py).

Masks are compared at the original image size. BCE and DICE are averaged over pixels per mask; a batch item's
masks are summed, divided by (n + 1e-8) and multiplied back by n, and the batch total is divided by (N + 1e-8),
N = masks in the batch. So every mask weighs the same, whichever image it belongs to (not every image).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-8


def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """logits, targets: [n, H, W] -> (sum over masks of the pixel-mean BCE-with-logits) / (num_masks + 1e-8).

    Targets are used as given (the reference's REFER masks can hold 2 where polygon parts overlap).
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.flatten(1).mean(1).sum() / (num_masks + _EPS)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float, scale: float = 1000.0,
              eps: float = 1e-6) -> torch.Tensor:
    """logits, targets: [n, H, W] -> (sum over masks of 1 - DICE(sigmoid(logits), targets)) / (num_masks + 1e-8).

    Per mask: 1 - (2 * sum(p/scale * t) + eps) / (sum(p/scale) + sum(t/scale) + eps). Dividing by `scale` before
    summing is the reference's (it keeps half-precision sums in range); it also sets how much `eps` matters,
    e.g. for an empty target, so it is kept for parity.
    """
    p = logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    numerator = 2 * (p / scale * t).sum(-1)
    denominator = (p / scale).sum(-1) + (t / scale).sum(-1)
    return (1 - (numerator + eps) / (denominator + eps)).sum() / (num_masks + _EPS)


def mask_losses(pred_masks: list[torch.Tensor], gt_masks: list[torch.Tensor], bce_weight: float = 2.0,
                dice_weight: float = 0.5, extra_bce: torch.Tensor | None = None,
                extra_dice: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """pred_masks[i], gt_masks[i]: [n_i, H_i, W_i] logits / targets of batch item i (n_i may be 0, e.g. VQA).

    Returns the weighted "mask_bce_loss", "mask_dice_loss" and their sum "mask_loss" (0-d tensors; zeros
    when the batch has no mask at all). extra_bce / extra_dice: a model family's own per-mask terms, summed over
    the batch's masks, which join the BCE / DICE sums before the mask-count normalisation and the weights
    (UGround's similarity losses).
    """
    if len(pred_masks) != len(gt_masks):
        raise ValueError(f"{len(pred_masks)} predicted mask sets for {len(gt_masks)} target sets")
    bce = dice = None
    total = 0
    for pred, gt in zip(pred_masks, gt_masks):
        if pred.shape != gt.shape:
            raise ValueError(f"predicted masks {tuple(pred.shape)} and targets {tuple(gt.shape)} differ")
        n = gt.shape[0]
        gt = gt.to(pred.dtype)
        item_bce = sigmoid_bce_loss(pred, gt, n) * n
        item_dice = dice_loss(pred, gt, n) * n
        bce = item_bce if bce is None else bce + item_bce
        dice = item_dice if dice is None else dice + item_dice
        total += n
    if bce is None:  # an empty batch: keep a tensor so callers can always .backward() / .item()
        bce = dice = torch.zeros(())
    bce = bce if extra_bce is None else bce + extra_bce
    dice = dice if extra_dice is None else dice + extra_dice
    bce = bce_weight * bce / (total + _EPS)
    dice = dice_weight * dice / (total + _EPS)
    return {"mask_bce_loss": bce, "mask_dice_loss": dice, "mask_loss": bce + dice}


def combine_losses(ce: torch.Tensor, masks: dict[str, torch.Tensor], ce_weight: float = 1.0) -> dict:
    """{"loss", "ce_loss", "mask_bce_loss", "mask_dice_loss", "mask_loss"}: loss = ce_weight * CE + mask_loss.

    ce_loss is reported already weighted, as the reference reports it.
    """
    ce_loss = ce * ce_weight
    return {"loss": ce_loss + masks["mask_loss"], "ce_loss": ce_loss, **masks}


def opening_token_ce(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean over rows of the cross-entropy of each row's first supervised token: its answer's opening ("Sure" or
    "Sorry", whether the thing asked for is there). Not part of LISA's loss: a trainer may weight it on its own,
    because in the token mean that one decision is a few per cent of the CE.

    logits [B, L, V] and labels [B, L] on the same positions (the token at j is predicted at j - 1, as in the CE).
    Rows without a supervised token are skipped; 0 (with a graph) when no row has one.
    """
    supervised = labels[:, 1:] != ignore_index
    rows = torch.nonzero(supervised.any(dim=1)).flatten()
    if len(rows) == 0:
        return logits.sum() * 0.0
    first = supervised[rows].float().argmax(dim=1)  # index into labels[:, 1:], so into logits[:, :-1]
    return F.cross_entropy(logits[rows, first].float(), labels[rows, first + 1])
