"""LisaForSegmentation: transformers' LLaVA (LLaMA + CLIP + projector) + SAM + the [SEG] projection head.

Data flow: CLIP patches -> projector -> spliced into the prompt embeddings at the image position -> LLaMA ->
final-layer state of the token before each [SEG] -> `seg_projection` -> SAM prompt -> mask logits.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from ..configuration_lisa import PROJECTOR_LINEAR, PROJECTOR_MLP2X_GELU, LisaConfig
from ..constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from ..families import ImageGeometry, family_named
from .sam import build_sam, decode_masks, upscale_masks


class LinearProjector(nn.Module):
    """LLaVA v1's projector: one Linear from CLIP width to LLaMA width (transformers has no switch for it)."""

    def __init__(self, vision_hidden: int, text_hidden: int):
        super().__init__()
        self.linear = nn.Linear(vision_hidden, text_hidden)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear(image_features)


def seg_projection(hidden: int, out_dim: int) -> nn.Sequential:
    """LISA's `text_hidden_fcs[0]`: Linear(H,H) -> ReLU -> Linear(H,out) -> Dropout(0)."""
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim), nn.Dropout(0.0))


class LisaForSegmentation(LlavaForConditionalGeneration):
    config_class = LisaConfig

    def __init__(self, config: LisaConfig):
        super().__init__(config)
        if config.projector_type == PROJECTOR_LINEAR:
            self.model.multi_modal_projector = LinearProjector(
                config.vision_config.hidden_size, config.text_config.hidden_size)
        elif config.projector_type != PROJECTOR_MLP2X_GELU:
            raise ValueError(f"unknown projector_type {config.projector_type!r}")
        self.sam = build_sam(config.sam_geometry)
        self.seg_projection = seg_projection(config.text_config.hidden_size, config.out_dim)
        self.family = family_named(config.family)
        for name, module in self.family.extra_modules(config).items():
            self.add_module(name, module)

    # ----- image side -------------------------------------------------------------------------------------------
    def image_tokens(self, clip_pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, 224, 224] -> [B, P, H] projected CLIP patch features (layer -2, CLS dropped)."""
        tower = self.model.vision_tower
        pixels = clip_pixels.to(device=tower.device, dtype=tower.dtype)
        states = tower(pixels, output_hidden_states=True).hidden_states[self.config.vision_feature_layer]
        if self.config.vision_feature_select_strategy == "default":
            states = states[:, 1:]
        return self.model.multi_modal_projector(states)

    def sam_embedding(self, sam_pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised, padded pixels -> [B, 256, S/16, S/16] SAM image embeddings (frozen encoder)."""
        enc = self.sam.image_encoder
        dtype = enc.patch_embed.proj.weight.dtype
        with torch.no_grad():
            return torch.cat([enc(p[None].to(enc.patch_embed.proj.weight.device, dtype)) for p in sam_pixels])

    # ----- text side --------------------------------------------------------------------------------------------
    def splice_image(self, input_ids: torch.Tensor, image_tokens: torch.Tensor,
                     labels: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None):
        """Replace the single IMAGE_TOKEN_INDEX of each row by that row's image tokens.

        input_ids [B, L] (one -200 per row), image_tokens [B, P, H] -> inputs_embeds [B, L-1+P, H], and the
        labels (image positions ignored) and attention mask (image positions attended) expanded the same way.
        """
        embed = self.model.language_model.get_input_embeddings()
        text = embed(input_ids.clamp_min(0))
        image_tokens = image_tokens.to(text.dtype)
        rows, label_rows, mask_rows = [], [], []
        for b in range(input_ids.shape[0]):
            where = (input_ids[b] == IMAGE_TOKEN_INDEX).nonzero().flatten()
            if where.numel() != 1:
                raise ValueError(f"row {b} holds {where.numel()} image placeholders; exactly one is supported")
            p = int(where)
            n = image_tokens.shape[1]
            rows.append(torch.cat([text[b, :p], image_tokens[b], text[b, p + 1:]]))
            if labels is not None:
                fill = labels.new_full((n,), IGNORE_INDEX)
                label_rows.append(torch.cat([labels[b, :p], fill, labels[b, p + 1:]]))
            if attention_mask is not None:
                fill = attention_mask.new_ones((n,))
                mask_rows.append(torch.cat([attention_mask[b, :p], fill, attention_mask[b, p + 1:]]))
        return (torch.stack(rows), torch.stack(label_rows) if labels is not None else None,
                torch.stack(mask_rows) if attention_mask is not None else None)

    @staticmethod
    def expanded_positions(input_ids: torch.Tensor, positions: torch.Tensor, num_image_tokens: int) -> torch.Tensor:
        """Map token positions of one row of `input_ids` (with -200) to positions in the spliced sequence."""
        image_pos = int((input_ids == IMAGE_TOKEN_INDEX).nonzero().flatten()[0])
        return positions + (positions > image_pos).long() * (num_image_tokens - 1)

    def seg_state_positions(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """Per row, spliced positions whose final state predicts a [SEG] of `input_ids` (the token before it)."""
        out = []
        for row in input_ids:
            before = (row[1:] == self.config.seg_token_id).nonzero().flatten()  # index of the token before [SEG]
            out.append(self.expanded_positions(row, before, self.config.num_image_tokens))
        return out

    def image_token_states(self, states: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """[T, H] spliced states of one row + its [L] input_ids (with -200) -> [P, H] states of the image tokens."""
        p = int((input_ids == IMAGE_TOKEN_INDEX).nonzero().flatten()[0])
        return states[p: p + self.config.num_image_tokens]

    def language_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        **kwargs) -> torch.Tensor:
        """Final-layer, post-norm LLaMA states [B, T, H]."""
        out = self.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
        return out.last_hidden_state

    # ----- mask side --------------------------------------------------------------------------------------------
    def masks_from_states(self, seg_states: torch.Tensor, image_embedding: torch.Tensor,
                          input_size: tuple[int, int], original_size: tuple[int, int],
                          image_states: torch.Tensor | None = None,
                          clip_valid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """[n, H] pre-[SEG] states + one image's [1, C, g, g] SAM embedding -> [n, h, w] float32 mask logits.
        n may be 0 (an answer without [SEG], e.g. "it is not here"): SAM's decoder cannot take an empty batch.
        image_states [P, H]: last-layer states of the image tokens, for families whose prompts use them;
        clip_valid_size: the image's (h, w) inside CLIP's padded square, for families that pad."""
        if seg_states.shape[0] == 0:
            return image_embedding.new_zeros((0, *original_size), dtype=torch.float32)
        seg = self.seg_projection(seg_states)
        geometry = ImageGeometry(tuple(original_size), tuple(input_size), self.sam.image_encoder.img_size,
                                 clip_valid_size)
        prompts = self.family.mask_prompts(self, seg_states, seg, image_states, geometry)
        low_res = decode_masks(self.sam, seg, image_embedding, prompts.points, prompts.dense)
        return upscale_masks(low_res, input_size, original_size, self.sam.image_encoder.img_size)

    # ----- training ---------------------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        """With `gt_masks` this is the training forward (so DDP / DeepSpeed / peft wrappers see a plain call);
        otherwise LLaVA's forward."""
        if "gt_masks" in kwargs:
            return self.forward_train(**kwargs)
        return super().forward(*args, **kwargs)

    def forward_train(self, clip_pixels: torch.Tensor, sam_pixels: torch.Tensor, input_ids: torch.Tensor,
                      labels: torch.Tensor, attention_mask: torch.Tensor, offset: list[int],
                      gt_masks: list[torch.Tensor], resize_list: list[tuple[int, int]],
                      ce_weight: float = 1.0, bce_weight: float = 2.0, dice_weight: float = 0.5
                      ) -> dict[str, torch.Tensor]:
        """The reference's training forward and loss (1.0*CE + 2.0*BCE + 0.5*DICE by default).

        clip_pixels / sam_pixels: one row per image; input_ids / labels / attention_mask: one row per
        conversation, conversations offset[i]:offset[i+1] belong to image i; gt_masks[i]: [n_i, H_i, W_i] float
        targets at the original size, one per [SEG] of image i's conversations, in order.
        """
        from ..losses import combine_losses, mask_losses  # training-only dependency

        image_embeddings = self.sam_embedding(sam_pixels)
        per_image = self.image_tokens(clip_pixels)
        counts = [offset[i + 1] - offset[i] for i in range(len(offset) - 1)]
        image_rows = torch.repeat_interleave(per_image, torch.tensor(counts, device=per_image.device), dim=0)
        embeds, labels_x, mask_x = self.splice_image(input_ids, image_rows, labels, attention_mask)
        states = self.language_states(embeds, mask_x)
        logits = self.lm_head(states).float()
        ce = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels_x[:, 1:].flatten(),
                                         ignore_index=IGNORE_INDEX)
        positions = self.seg_state_positions(input_ids)
        pred_masks = []
        for i in range(len(offset) - 1):
            rows = range(offset[i], offset[i + 1])
            seg_states = torch.cat([states[r, positions[r]] for r in rows])
            # image-token states precede each row's question, so (causal) every conversation of image i has the same
            image_states = self.image_token_states(states[offset[i]], input_ids[offset[i]])
            seg_logits = self.masks_from_states(seg_states, image_embeddings[i:i + 1], resize_list[i],
                                                tuple(gt_masks[i].shape[-2:]), image_states)
            # the family pairs them with the targets (GSVA: a [REJ] target gets all-zero logits)
            pred_masks.append(self.family.loss_masks(self, seg_logits, input_ids[rows.start:rows.stop], gt_masks[i]))
        losses = mask_losses(pred_masks, gt_masks, bce_weight=bce_weight, dice_weight=dice_weight)
        out = combine_losses(ce, losses, ce_weight=ce_weight)
        out["pred_masks"] = pred_masks
        out["seg_states"] = [states[r, positions[r]] for r in range(states.shape[0])]
        return out
