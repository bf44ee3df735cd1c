"""READ (rui-qian/READ; weights rui-qian/READ-LLaVA-v1.5-7B/13B-for-ReasonSeg-*): "similarity as points".

What differs from LISA (docs/families/read.md has every step):
* CLIP sees the image padded to its square with SAM's recipe (as the evaluation scripts run it), no patch masks.
* The dot product of the state that predicted each [SEG] with the 576 image-token states becomes up to 60 SAM
  point prompts - positives where the normalised map is >= 0.8, negatives where it is <= 0.2, the rest "not a
  point" - each pulled a fraction of a cell towards higher similarity by a softmax-weighted, Gaussian-windowed
  mean; SAM gets them together with the [SEG] embedding.

Training adds no loss term (LISA's CE + BCE + DICE): gradients reach the language model through the [SEG]
embedding and through the soft-argmax point positions (SAM's positional encoding of the points); the discrete
choice of cells carries none. As in the UGround framework, SAM's prompt encoder trains too.

We follow READ as the UGround code base implements it (its validation is our fixture's reference). READ's own
repository, which trained the released weights, differs in its point constants and map handling (centre-cropped
CLIP input, a 12 x 12 map for READ-7B, 30 points, a full-resolution refinement; read.md section 6): with those
weights our masks are the port's, not the paper's numbers. The point count and thresholds are family options.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch

from .base import Family, ImageGeometry, MaskPrompts
from .similarity import grid_side, min_max, raw_similarity, scaled_side

_DEFAULTS = {"num_points": 60, "t_pos": 0.8, "t_neg": 0.2}


class Read(Family):
    name = "read"
    architectures = ("READForCausalLM",)
    needs_image_states = True

    def options(self, config) -> dict:
        return {**_DEFAULTS, **(config.family_options or {})}

    def config_options(self, raw_config: Mapping, keys: Iterable[str]) -> dict:
        return {}  # its config.json holds nothing beyond LLaVA-1.5's; the point constants live in code

    def clip_pads_image(self, config) -> bool:
        return True

    def trainable_prefixes(self, config) -> tuple[str, ...]:
        return ("sam.prompt_encoder.",)

    def untrained_prefixes(self, config) -> tuple[str, ...]:
        # points only: the box-corner embeddings and the mask-prompt convolutions never see a gradient
        return ("sam.prompt_encoder.point_embeddings.2.", "sam.prompt_encoder.point_embeddings.3.",
                "sam.prompt_encoder.mask_downscaling.")

    def mask_prompts(self, model, seg_states: torch.Tensor, seg_embeddings: torch.Tensor,
                     image_states: torch.Tensor | None, geometry: ImageGeometry) -> MaskPrompts:
        if image_states is None:
            raise ValueError("READ's point prompts need the image-token states")
        o = self.options(model.config)
        similarity = raw_similarity(seg_states, image_states)
        coords, labels = similarity_points(similarity, geometry, o["num_points"], o["t_pos"], o["t_neg"])
        return MaskPrompts(points=(coords, labels), extras={"similarity": similarity})


def similarity_points(similarity: torch.Tensor, geometry: ImageGeometry, num_points: int, t_pos: float,
                      t_neg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, P] raw similarities -> (coords [n, k, 2] (x, y) in SAM's input frame, labels [n, k]: 1 / 0 / -1)."""
    n, tokens = similarity.shape
    side = grid_side(tokens)
    h, w = geometry.original_size
    crop_h, crop_w = scaled_side(h, max(h, w), side), scaled_side(w, max(h, w), side)
    maps = min_max(similarity, eps=1e-6).view(n, side, side)[:, :crop_h, :crop_w].reshape(n, -1)
    rows = torch.arange(crop_h, dtype=torch.float32).repeat_interleave(crop_w)  # cell k's row and column
    cols = torch.arange(crop_w, dtype=torch.float32).repeat(crop_h)
    sam_h, sam_w = geometry.sam_input_size
    all_coords, all_labels = [], []
    for values in maps:
        chosen, labels = _select(values, num_points, t_pos, t_neg)
        # a cell's centre, kept inside the crop (the last row / column sit on its edge)
        x = (cols[chosen] + 0.5).clamp(max=crop_w - 1)
        y = (rows[chosen] + 0.5).clamp(max=crop_h - 1)
        weights = torch.softmax(values, dim=0)
        x, y = _soft_argmax(x, y, cols, rows, weights)
        x, y = x * w / crop_w, y * h / crop_h  # crop cells -> original pixels -> SAM's resized frame
        all_coords.append(torch.stack([x * sam_w / w, y * sam_h / h], dim=-1))
        all_labels.append(labels)
    return torch.stack(all_coords), torch.stack(all_labels)


def _select(values: torch.Tensor, num_points: int, t_pos: float, t_neg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cells to prompt with, in order: positives (>= t_pos, most similar first), negatives (in [0, t_neg], least
    similar first), then the others in cell order; the first `num_points`. Labels 1 / 0 / -1."""
    order = torch.arange(len(values))
    pos = order[values >= t_pos]
    pos = pos[torch.argsort(values[pos], descending=True)]
    neg = order[(values >= 0) & (values <= t_neg)]
    neg = neg[torch.argsort(values[neg])]
    rest = order[(values > t_neg) & (values < t_pos)]
    chosen = torch.cat([pos, neg, rest])[:num_points]
    labels = torch.full((len(chosen),), -1, dtype=torch.long)
    labels[: min(len(pos), num_points)] = 1
    labels[len(pos): min(len(pos) + len(neg), num_points)] = 0
    return chosen, labels


def _soft_argmax(x: torch.Tensor, y: torch.Tensor, cols: torch.Tensor, rows: torch.Tensor,
                 weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each point (x, y) moved to the mean cell position weighted by softmax(similarity) * exp(-distance^2)."""
    d2 = (cols[None] - x[:, None]) ** 2 + (rows[None] - y[:, None]) ** 2  # [k, cells], in cell units
    w = torch.exp(-d2) * weights[None]
    w = w / (w.sum(dim=1, keepdim=True) + 1e-8)
    return (w * cols[None]).sum(dim=1), (w * rows[None]).sum(dim=1)


READ = Read()
