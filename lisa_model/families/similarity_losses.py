"""UGround's similarity supervision: the normalised [SEG]-to-image similarity map at the image's size, taken as
logits, against a Gaussian-blurred copy of each gt mask (docs/families/uground.md section 4).

The map's values lie in [0, 1], so as logits they can never reach a confident 0 or 1: the terms never vanish.
That is the reference's definition, kept for parity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-8


def gaussian_targets(masks: torch.Tensor, kernel_size: int = 31, sigma: float = 7.0) -> torch.Tensor:
    """[n, H, W] 0/1 masks -> [n, H, W] float32 heat maps: a normalised Gaussian blur (reflect-padded, valid
    convolution), each map divided by its own maximum (at least 1e-6).

    The kernel is odd, at most min(H, W) (then made odd again, at least 3)."""
    k = kernel_size + (kernel_size % 2 == 0)
    k = min(k, min(masks.shape[-2:]))
    if k % 2 == 0:
        k = max(3, k - 1)
    coords = torch.arange(k, dtype=torch.float32, device=masks.device) - (k - 1) / 2
    kernel = torch.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2 * torch.tensor(sigma) ** 2))
    kernel = (kernel / kernel.sum())[None, None]
    x = masks.float()[:, None]
    pad = min(k // 2, min(masks.shape[-2:]) // 2)
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    heat = F.conv2d(x, kernel)[:, 0]
    if heat.shape[0]:
        heat = heat / heat.flatten(1).max(1).values.clamp_min(1e-6)[:, None, None]
    return heat


def positive_weight(targets: torch.Tensor) -> float:
    """(soft negatives) / (soft positives) over all of an image's target maps together (positives at least 1e-6)."""
    positives = float(targets.sum())
    return (targets.numel() - positives) / max(positives, 1e-6)


def gaussian_bce(maps: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """maps (used as logits), targets: [n, H, W] -> sum over masks of the pixel-mean BCE with the image's positive
    weight, / (num_masks + 1e-8)."""
    weight = torch.tensor(positive_weight(targets), dtype=maps.dtype, device=maps.device)
    loss = F.binary_cross_entropy_with_logits(maps, targets.to(maps.dtype), pos_weight=weight, reduction="none")
    return loss.flatten(1).mean(1).sum() / (num_masks + _EPS)


def gaussian_dice(maps: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """maps (logits), targets: [n, H, W] -> sum over masks of 1 - DICE(sigmoid(maps), targets * positive weight),
    / (num_masks + 1e-8). Unlike LISA's DICE, no 1/1000 scale."""
    weight = torch.tensor(positive_weight(targets), dtype=maps.dtype, device=maps.device)
    p = maps.sigmoid().flatten(1)
    t = targets.to(maps.dtype).flatten(1) * weight
    loss = 1 - (2 * (p * t).sum(-1) + 1e-6) / (p.sum(-1) + t.sum(-1) + 1e-6)
    return loss.sum() / (num_masks + _EPS)
