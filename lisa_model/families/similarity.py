"""The [SEG]-to-image similarity map that READ and UGround turn into SAM prompts.

Both take the final-layer state that predicted each [SEG] and the final-layer states of the image tokens, and use
their plain dot product (no scaling, no normalisation of the states) per image token.
"""
from __future__ import annotations

import torch


def raw_similarity(seg_states: torch.Tensor, image_states: torch.Tensor) -> torch.Tensor:
    """seg_states [n, H], image_states [P, H] (or [n, P, H]: each [SEG] its own, e.g. from the layer UGround's
    training policy chose for it) -> [n, P] float32 dot products (also under mixed-precision training's autocast:
    the maps that follow are normalised by their range and interpolated, and CPUs have no bfloat16 gradient for
    the antialiased resize)."""
    with torch.autocast(seg_states.device.type, enabled=False):
        if image_states.dim() == 3:
            return torch.einsum("nh,nph->np", seg_states.float(), image_states.float())
        return seg_states.float() @ image_states.float().T


def min_max(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """[n, P] -> each row scaled to [0, 1] by its own minimum and maximum (+ eps in the denominator)."""
    low = x.min(dim=-1, keepdim=True).values
    high = x.max(dim=-1, keepdim=True).values
    return (x - low) / (high - low + eps)


def grid_side(num_tokens: int) -> int:
    """Side of the square patch grid of `num_tokens` image tokens (24 for 576)."""
    side = int(round(num_tokens ** 0.5))
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} image tokens do not form a square grid")
    return side


def scaled_side(side: int, long_side: int, target: int) -> int:
    """A side scaled so the image's longer side becomes `target`, rounded half up (SAM's ResizeLongestSide)."""
    return int(side * target / long_side + 0.5)
