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
* Training (section 4 of the doc) adds the similarity map's Gaussian BCE / DICE to LISA's BCE / DICE, trains SAM's
  prompt encoder (it reads the mask prompt) and, in modes 2 and 3, the layer policy (layer_policy.py).
* Its checkpoints carry `out_mm_projector` (fed by CLIP layer -11, used by no output) and the policy weights;
  they are kept as modules so that our exports carry them too.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .base import Family, FamilyLosses, ImageGeometry, LayerChoice, MaskPrompts
from .layer_policy import LayerPolicy, make_critic
from .similarity import grid_side, min_max, raw_similarity, scaled_side
from .similarity_losses import gaussian_bce, gaussian_dice, gaussian_targets

# config.json keys of a release that describe the model (kept in LisaConfig.family_options)
_OPTION_KEYS = ("pad_train_clip_images", "separate_mm_projector", "eval_legacy", "num_layers", "strategy", "mode",
                "baseline_type", "baseline_beta", "critic_hidden_dim")
_DEFAULTS = {"pad_train_clip_images": True, "eval_legacy": True, "strategy": "policy_walker", "mode": 3,
             "baseline_type": "ema", "baseline_beta": 1.0, "critic_hidden_dim": 128}
# what a training config may set (TrainConfig.family_options); policy_weight is hard-coded 0.4 in the reference
_TRAINING_KEYS = ("mode", "baseline_type", "baseline_beta", "critic_hidden_dim", "policy_weight")
_POLICY_WEIGHT = 0.4
# prompt-encoder weights a mask prompt never reaches (no points or boxes, and the mask replaces "no mask")
_UNUSED_PROMPT_WEIGHTS = ("sam.prompt_encoder.point_embeddings.", "sam.prompt_encoder.not_a_point_embed.",
                          "sam.prompt_encoder.no_mask_embed.")


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
        at_image = similarity_at_image_size(similarity, geometry, model.config.vision_config.image_size)
        dense = mask_input(at_image, geometry, model.sam.prompt_encoder.mask_input_size[0])
        return MaskPrompts(dense=dense, extras={"similarity": similarity, "similarity_map": at_image[:, 0]})

    # ----- training ---------------------------------------------------------------------------------------------
    def configure_training(self, model, options: Mapping) -> None:
        unknown = sorted(set(options) - set(_TRAINING_KEYS))
        if unknown:
            raise ValueError(f"UGround training options are {', '.join(_TRAINING_KEYS)}; got {unknown}")
        if options.get("mode", 1) not in (1, 2, 3) or options.get("baseline_type", "ema") not in ("ema", "critic"):
            raise ValueError(f"UGround: mode 1, 2 or 3 and baseline_type ema or critic (got {dict(options)})")
        model.config.family_options = {**(model.config.family_options or {}), **options}
        o = self.options(model.config)
        if o["baseline_type"] == "critic" and model.ppm.critic is None:  # a release trained with the EMA baseline
            model.ppm.critic = make_critic(o["num_layers"], o["critic_hidden_dim"]).to(
                model.ppm._layer_gate_W_similarity.device)

    def trainable_prefixes(self, config) -> tuple[str, ...]:
        return ("sam.prompt_encoder.", "ppm.")

    def untrained_prefixes(self, config) -> tuple[str, ...]:
        policy_learns = self.options(config)["mode"] in (2, 3)
        return _UNUSED_PROMPT_WEIGHTS + (() if policy_learns else ("ppm.",))

    def training_mode(self, model) -> int:
        """1 (final layer, no policy), 2 (sampled layer for the similarity) or 3 (and for the SAM embedding).
        Evaluation (model.eval()) of an `eval_legacy` model runs mode 1, as the reference."""
        o = self.options(model.config)
        return 1 if (not model.training and o["eval_legacy"]) else int(o["mode"])

    def needs_layer_states(self, model) -> bool:
        return self.training_mode(model) in (2, 3)

    def choose_layers(self, model, seg_layer_states: torch.Tensor) -> LayerChoice | None:
        mode = self.training_mode(model)
        if mode == 1 or seg_layer_states.shape[0] == 0:
            return None
        actions, log_probs, probs_mean = model.ppm.sample(seg_layer_states)
        last = torch.full_like(actions, seg_layer_states.shape[1] - 1)
        return LayerChoice(similarity=actions, sam=actions if mode == 3 else last, log_probs=log_probs,
                           probs_mean=probs_mean)

    def training_losses(self, model, prompts, gt_masks, choice) -> FamilyLosses:
        """Gaussian BCE / DICE of each image's similarity maps (summed over masks, joining LISA's BCE / DICE) and,
        when a policy chose the layers, its REINFORCE loss with reward -(sum of those terms)."""
        bce, dice, per_bce, per_dice = [], [], [], []
        for prompt, gt in zip(prompts, gt_masks):
            n = gt.shape[0]
            b = d = torch.zeros(())  # no [SEG]: nothing to supervise (the reference's terms are 0 too)
            if prompt is not None and n > 0:
                maps = prompt.extras["similarity_map"]
                targets = gaussian_targets(gt)
                b, d = gaussian_bce(maps, targets, n), gaussian_dice(maps, targets, n)
                bce.append(b * n)
                dice.append(d * n)
            per_bce.append(float(b.detach()))
            per_dice.append(float(d.detach()))
        if not bce:
            return FamilyLosses(components={"gaussian_bce_per_image": per_bce, "gaussian_dice_per_image": per_dice})
        bce_sum, dice_sum = sum(bce), sum(dice)
        reward = -(bce_sum + dice_sum).detach()
        out = FamilyLosses(bce=bce_sum, dice=dice_sum, components={
            "gaussian_bce_per_image": per_bce, "gaussian_dice_per_image": per_dice, "reward": float(reward)})
        if choice is not None and choice.log_probs is not None:
            o = self.options(model.config)
            policy = model.ppm.reinforce_loss(reward, choice.log_probs, choice.probs_mean, o["baseline_type"],
                                              o["baseline_beta"])
            out.added["policy_loss"] = o.get("policy_weight", _POLICY_WEIGHT) * policy
            out.components.update(policy=float(policy.detach()), reward_running_mean=model.ppm.reward_running_mean,
                                  layers=choice.similarity.tolist())
        return out

    def read_answer(self, ids: list[int], tokenizer):
        """As LISA, and each [REJ] (trained on gRefCOCO: "no such target here") is a rejection without a mask."""
        parts = super().read_answer(ids, tokenizer)
        rej = tokenizer.added_tokens.get("[REJ]")
        parts.rejected = [""] * ids.count(rej) if rej is not None else []
        return parts


def similarity_at_image_size(similarity: torch.Tensor, geometry: ImageGeometry, clip_size: int) -> torch.Tensor:
    """[n, P] raw similarities -> [n, 1, H, W] maps in [0, 1] at the original image size.

    Normalised over all P tokens (padding included), as a map over the whole padded CLIP square, cropped to the
    image and brought to its size (the map the training's Gaussian losses compare)."""
    n, tokens = similarity.shape
    side = grid_side(tokens)
    x = min_max(similarity).view(n, 1, side, side)
    x = F.interpolate(x, (clip_size, clip_size), mode="bilinear", align_corners=False)
    h, w = geometry.original_size
    long_side = max(h, w)
    x = x[..., : scaled_side(h, long_side, clip_size), : scaled_side(w, long_side, clip_size)]
    return F.interpolate(x, (h, w), mode="bilinear", align_corners=False)


def mask_input(maps: torch.Tensor, geometry: ImageGeometry, size: int) -> torch.Tensor:
    """[n, 1, H, W] maps -> [n, 1, size, size] SAM mask input (size = 4x SAM's embedding grid, 256 for 1024 px):
    longest side `size` (antialiased, as the reference), zero-padded bottom / right."""
    h, w = geometry.original_size
    x = F.interpolate(maps, (scaled_side(h, max(h, w), size), scaled_side(w, max(h, w), size)), mode="bilinear",
                      align_corners=False, antialias=True)
    return F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))


UGROUND = UGround()
