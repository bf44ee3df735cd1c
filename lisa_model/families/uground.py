"""UGround (rui-qian/UGround; weights rui-qian/hf-UGround-7b/13b_reason_seg_test_llava1.5 and their _ema variants).

What differs from LISA, at inference as the official evaluation (`train_ds.py validate()`) runs it
(docs/families/uground.md has every step and the points where the official demo differs):
* CLIP sees the image padded to its square with SAM's recipe (`pad_train_clip_images`), and the patches of padding
  are masked as keys in every CLIP layer and left out of the language model's attention altogether (the released
  weights were trained with flash attention, which unpads them: see `LisaForSegmentation.masked_tokens_silenced`).
* "Mask as prompt": the dot product of the state that predicted each [SEG] with the 576 image-token states is
  min-max normalised, brought to the image's size and then to SAM's 256 x 256 mask input, and given to SAM as a
  dense prompt beside the usual [SEG] embedding.
* The learned layer selection (`ppm`) is off at inference (`eval_legacy`): the final layer is used. We always run
  it so - the evaluation's path; a checkpoint saying `eval_legacy: false` would make the reference sample a layer at
  random, which no robot wants.
* Its checkpoints carry `out_mm_projector` (fed by CLIP layer -11, used by no output) and the policy weights;
  they are kept as modules so that our exports carry them too.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .base import Family, ImageGeometry, MaskPrompts
from .similarity import grid_side, min_max, raw_similarity, scaled_side

# config.json keys of a release that describe the model (kept in LisaConfig.family_options)
_OPTION_KEYS = ("pad_train_clip_images", "separate_mm_projector", "eval_legacy", "num_layers", "strategy", "mode",
                "baseline_type", "baseline_beta", "critic_hidden_dim")
_DEFAULTS = {"pad_train_clip_images": True, "eval_legacy": True, "strategy": "policy_walker", "mode": 3,
             "baseline_type": "ema", "baseline_beta": 1.0, "critic_hidden_dim": 128}


class LayerPolicy(nn.Module):
    """UGround's layer-selection policy weights (`ppm`): one gate vector per hidden-state entry, and a critic when
    the checkpoint was trained with a critic baseline. Used by training only."""

    def __init__(self, num_layers: int, hidden: int, critic_hidden: int | None):
        super().__init__()
        self._layer_gate_W_similarity = nn.Parameter(torch.zeros(num_layers, hidden))
        self.critic = None if critic_hidden is None else nn.Sequential(
            nn.Linear(num_layers, critic_hidden), nn.ReLU(), nn.Linear(critic_hidden, 1))


class UGround(Family):
    name = "uground"
    architectures = ("UGroundForCausalLM",)
    extra_tokens = ("[REJ]",)
    key_rules = (
        (r"^model\.out_mm_projector\.", "out_mm_projector."),
        (r"^model\.decoder_modules_initialized$", None),  # a flag of the reference's loader, not a weight
    )
    needs_image_states = True

    def options(self, config) -> dict:
        return {**_DEFAULTS, "num_layers": config.text_config.num_hidden_layers + 1, **(config.family_options or {})}

    def config_options(self, raw_config: Mapping, keys: Iterable[str]) -> dict:
        return {k: raw_config[k] for k in _OPTION_KEYS if k in raw_config}

    def extra_modules(self, config) -> dict[str, nn.Module]:
        o = self.options(config)
        hidden, vision = config.text_config.hidden_size, config.vision_config.hidden_size
        critic = o["critic_hidden_dim"] if o["baseline_type"] == "critic" else None
        return {"out_mm_projector": nn.Sequential(nn.Linear(vision, hidden), nn.GELU(), nn.Linear(hidden, hidden)),
                "ppm": LayerPolicy(o["num_layers"], hidden, critic)}

    def clip_pads_image(self, config) -> bool:
        return bool(self.options(config)["pad_train_clip_images"])

    def patch_mask(self, config, clip_valid_size: tuple[int, int] | None) -> torch.Tensor | None:
        if clip_valid_size is None or not self.clip_pads_image(config):
            return None
        patch = config.vision_config.patch_size
        side = config.vision_config.image_size // patch
        rows = torch.arange(side) * patch < clip_valid_size[0]
        cols = torch.arange(side) * patch < clip_valid_size[1]
        grid = (rows[:, None] & cols[None, :]).flatten()
        return torch.cat([torch.ones(1, dtype=torch.bool), grid])[None]  # CLS always attends

    def mask_prompts(self, model, seg_states: torch.Tensor, seg_embeddings: torch.Tensor,
                     image_states: torch.Tensor | None, geometry: ImageGeometry) -> MaskPrompts:
        if image_states is None:
            raise ValueError("UGround's mask prompt needs the image-token states")
        similarity = raw_similarity(seg_states, image_states)  # [n, P]
        dense = similarity_mask_prompt(similarity, geometry, model.config.vision_config.image_size)
        return MaskPrompts(dense=dense, extras={"similarity": similarity})

    def read_answer(self, ids: list[int], tokenizer):
        """As LISA, and each [REJ] (trained on gRefCOCO: "no such target here") is a rejection without a mask."""
        parts = super().read_answer(ids, tokenizer)
        rej = tokenizer.added_tokens.get("[REJ]")
        parts.rejected = [""] * ids.count(rej) if rej is not None else []
        return parts


def similarity_mask_prompt(similarity: torch.Tensor, geometry: ImageGeometry, clip_size: int) -> torch.Tensor:
    """[n, P] raw similarities -> [n, 1, M, M] mask prompt in [0, 1] (M = SAM's low-res size, 256).

    Normalised over all P tokens (padding included), as a map over the whole padded CLIP square, cropped to the
    image, brought to the original size, then to SAM's mask-input frame (longest side M, antialiased) and padded."""
    n, tokens = similarity.shape
    side = grid_side(tokens)
    x = min_max(similarity).view(n, 1, side, side)
    x = F.interpolate(x, (clip_size, clip_size), mode="bilinear", align_corners=False)
    h, w = geometry.original_size
    long_side = max(h, w)
    x = x[..., : scaled_side(h, long_side, clip_size), : scaled_side(w, long_side, clip_size)]
    x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False)
    size = geometry.sam_image_size // 4  # SAM's mask input is 4x its embedding grid: 256 for 1024 px
    x = F.interpolate(x, (scaled_side(h, long_side, size), scaled_side(w, long_side, size)), mode="bilinear",
                      align_corners=False, antialias=True)
    return F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))


UGROUND = UGround()
