"""LisaForSegmentation: transformers' LLaVA (LLaMA + CLIP + projector) + SAM + the [SEG] projection head.

Data flow: CLIP patches -> projector -> spliced into the prompt embeddings at the image position -> LLaMA ->
final-layer state of the token before each [SEG] -> `seg_projection` -> SAM prompt -> mask logits.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from ..configuration_lisa import PROJECTOR_LINEAR, PROJECTOR_MLP2X_GELU, LisaConfig
from ..constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from ..families import ImageGeometry, LayerChoice, MaskPrompts, family_named
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
    def image_tokens(self, clip_pixels: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 3, S, S] -> [B, P, H] projected CLIP patch features (layer -2, CLS dropped).

        patch_mask: [B, 1 + P] bool (CLS first), False for patches of padding: they are masked as keys in every
        CLIP layer (UGround's padded input); None attends everywhere."""
        tower = self.model.vision_tower
        pixels = clip_pixels.to(device=tower.device, dtype=tower.dtype)
        extra = {}
        if patch_mask is not None:
            additive = torch.zeros(patch_mask.shape, dtype=tower.dtype, device=tower.device)
            additive.masked_fill_(~patch_mask.to(tower.device), torch.finfo(tower.dtype).min)
            extra["attention_mask"] = additive[:, None, None, :]  # [B, 1, 1, 1 + P]: a key mask for every query
        states = tower(pixels, output_hidden_states=True, **extra).hidden_states[self.config.vision_feature_layer]
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
                     labels: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                     image_token_mask: torch.Tensor | None = None):
        """Replace the single IMAGE_TOKEN_INDEX of each row by that row's image tokens.

        input_ids [B, L] (one -200 per row), image_tokens [B, P, H] -> inputs_embeds [B, L-1+P, H], and the
        labels (image positions ignored) and attention mask expanded the same way. image_token_mask [B, P] bool:
        False for image tokens of padding, which the attention mask then leaves out (an all-ones mask is made
        when none is given); None attends to every image token.
        """
        if image_token_mask is not None and attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
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
                fill = attention_mask.new_ones((n,)) if image_token_mask is None else \
                    image_token_mask[b].to(attention_mask.dtype)
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

    def forced_states(self, input_ids: torch.Tensor, image_tokens: torch.Tensor,
                      image_token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final-layer states [B, T, H] of given ids [B, L] (prompt and answer: teacher forcing, no generation)
        with the image tokens [B, P, H] spliced in (T = L - 1 + P); padded image tokens masked as in splice_image."""
        embeds, _, mask = self.splice_image(input_ids, image_tokens, image_token_mask=image_token_mask)
        return self.language_states(embeds, mask)

    def language_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        all_layers: bool = False, **kwargs) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Final-layer, post-norm LLaMA states [B, T, H]; masked tokens are silenced (`masked_tokens_silenced`).
        all_layers: every hidden-state entry instead, E = layers + 1 of them (embedding output, each layer's
        output, the last one post-norm)."""
        with self.masked_tokens_silenced(attention_mask):
            out = self.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                            output_hidden_states=all_layers or None, **kwargs)
        return tuple(out.hidden_states) if all_layers else out.last_hidden_state

    @contextmanager
    def masked_tokens_silenced(self, attention_mask: torch.Tensor | None):
        """Within this context, tokens that `attention_mask` [B, T] leaves out are removed from attention
        altogether, as the flash-attention training of these models did (padding is unpadded away): they are no
        keys (the mask itself does that) and their own attention output is zero in every layer (this hook), while
        the residual stream and the MLP still run on them. Valid tokens are unaffected; the states of masked ones
        differ from an eager masked attention, and UGround's similarity map reads them."""
        if attention_mask is None or bool(attention_mask.all()):
            yield
            return
        keep = attention_mask[..., None]

        def silence(module, args, output):
            attn = output[0]
            if attn.shape[1] != keep.shape[1]:  # a cached decode step: its one query is never masked
                return output
            return (attn * keep.to(attn.dtype), *output[1:])

        handles = [layer.self_attn.register_forward_hook(silence) for layer in self.model.language_model.layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # ----- mask side --------------------------------------------------------------------------------------------
    def masks_from_states(self, seg_states: torch.Tensor, image_embedding: torch.Tensor,
                          input_size: tuple[int, int], original_size: tuple[int, int],
                          image_states: torch.Tensor | None = None,
                          clip_valid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """[n, H] pre-[SEG] states + one image's [1, C, g, g] SAM embedding -> [n, h, w] float32 mask logits.
        n may be 0 (an answer without [SEG], e.g. "it is not here"): SAM's decoder cannot take an empty batch.
        image_states [P, H]: last-layer states of the image tokens, for families whose prompts use them;
        clip_valid_size: the image's (h, w) inside CLIP's padded square, for families that pad."""
        return self.masks_with_prompts(seg_states, image_embedding, input_size, original_size, image_states,
                                       clip_valid_size)[0]

    def masks_with_prompts(self, seg_states: torch.Tensor, image_embedding: torch.Tensor,
                           input_size: tuple[int, int], original_size: tuple[int, int],
                           image_states: torch.Tensor | None = None,
                           clip_valid_size: tuple[int, int] | None = None,
                           prompt_states: torch.Tensor | None = None) -> tuple[torch.Tensor, MaskPrompts | None]:
        """`masks_from_states`, and the family's SAM prompts (None when n = 0), whose extras the training losses
        read. prompt_states [n, H]: the states the family's prompts are built from when they are not seg_states
        (UGround's training policy may read them from another layer); image_states may then be [n, P, H]."""
        if seg_states.shape[0] == 0:
            return image_embedding.new_zeros((0, *original_size), dtype=torch.float32), None
        seg = self.seg_projection(seg_states)
        geometry = ImageGeometry(tuple(original_size), tuple(input_size), self.sam.image_encoder.img_size,
                                 clip_valid_size)
        prompts = self.family.mask_prompts(self, seg_states if prompt_states is None else prompt_states, seg,
                                           image_states, geometry)
        low_res = decode_masks(self.sam, seg, image_embedding, prompts.points, prompts.dense)
        return upscale_masks(low_res, input_size, original_size, self.sam.image_encoder.img_size), prompts

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
                      ce_weight: float = 1.0, bce_weight: float = 2.0, dice_weight: float = 0.5,
                      patch_mask: torch.Tensor | None = None, middle_states: bool = False) -> dict:
        """The reference's training forward and loss (1.0*CE + 2.0*BCE + 0.5*DICE by default), plus the family's
        terms (`Family.training_losses`).

        clip_pixels / sam_pixels: one row per image; input_ids / labels / attention_mask: one row per
        conversation, conversations offset[i]:offset[i+1] belong to image i; gt_masks[i]: [n_i, H_i, W_i] float
        targets at the original size, one per [SEG] of image i's conversations, in order; patch_mask [B, 1 + P]
        bool: the family's CLIP patch mask per image (`LisaSegmenter.clip_input`), None when it has none.
        Returns the losses (0-d; `loss` is what to minimise; the family's added terms also under
        `family_losses`; `opening_ce`, the answers' first tokens alone, is not in `loss`), `pred_masks`,
        `seg_states` (per row) and the family's `components`. middle_states: also the states after the middle layer
        (hidden-state entry E // 2), what the later layers' attention takes its queries and keys from:
        `opening_states` [R, H], each row's where its answer's first token is predicted, and `image_states`
        [B, P, H], each image's tokens.
        """
        from ..losses import combine_losses, mask_losses, opening_token_ce  # training-only dependency

        image_embeddings = self.sam_embedding(sam_pixels)
        per_image = self.image_tokens(clip_pixels, patch_mask)
        counts = torch.tensor([offset[i + 1] - offset[i] for i in range(len(offset) - 1)], device=per_image.device)
        image_rows = torch.repeat_interleave(per_image, counts, dim=0)
        token_mask = None if patch_mask is None else \
            torch.repeat_interleave(patch_mask[:, 1:].to(per_image.device), counts, dim=0)
        embeds, labels_x, mask_x = self.splice_image(input_ids, image_rows, labels, attention_mask, token_mask)
        layers = self.language_states(embeds, mask_x,
                                      all_layers=middle_states or self.family.needs_layer_states(self))
        layers = layers if isinstance(layers, tuple) else (layers,)
        states = layers[-1]
        logits = self.lm_head(states).float()
        ce = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels_x[:, 1:].flatten(),
                                         ignore_index=IGNORE_INDEX)
        positions = self.seg_state_positions(input_ids)
        # every [SEG] of the batch, rows in order: its row, and its states in every kept layer [N, E, H]
        seg_rows = torch.cat([torch.full((len(p),), r, dtype=torch.long) for r, p in enumerate(positions)])
        seg_layers = torch.cat([torch.stack([h[r, p] for h in layers], dim=1) for r, p in enumerate(positions)])
        choice = self.family.choose_layers(self, seg_layers)
        pred_masks, prompts, first = [], [], 0
        for i in range(len(offset) - 1):
            n = sum(len(positions[r]) for r in range(offset[i], offset[i + 1]))
            picked = slice(first, first + n)
            first += n
            if choice is None:
                sam_states = prompt_states = seg_layers[picked, -1]
                # image-token states precede each row's question, so (causal) every conversation of image i has
                # the same
                image_states = self.image_token_states(states[offset[i]], input_ids[offset[i]])
            else:
                sam_states, prompt_states, image_states = self._chosen_states(
                    layers, input_ids, seg_layers[picked], seg_rows[picked], choice, picked)
            masks, image_prompts = self.masks_with_prompts(
                sam_states, image_embeddings[i:i + 1], resize_list[i], tuple(gt_masks[i].shape[-2:]), image_states,
                prompt_states=prompt_states)
            # the family pairs them with the targets (GSVA: a [REJ] target gets all-zero logits)
            pred_masks.append(self.family.loss_masks(self, masks, input_ids[offset[i]:offset[i + 1]], gt_masks[i]))
            prompts.append(image_prompts)
        extra = self.family.training_losses(self, prompts, gt_masks, choice)
        losses = mask_losses(pred_masks, gt_masks, bce_weight=bce_weight, dice_weight=dice_weight,
                             extra_bce=extra.bce, extra_dice=extra.dice)
        out = combine_losses(ce, losses, ce_weight=ce_weight)
        out["opening_ce"] = opening_token_ce(logits, labels_x, IGNORE_INDEX)  # not in `loss`: the trainer's choice
        if middle_states:
            middle = layers[len(layers) // 2]
            supervised = labels_x[:, 1:] != IGNORE_INDEX  # as opening_token_ce: the token at j is predicted at j - 1
            first = supervised.float().argmax(dim=1)
            out["opening_states"] = middle[torch.arange(len(first), device=first.device), first]
            # causal attention: an image's tokens come before its questions, so its first row's are every row's
            out["image_states"] = torch.stack([self.image_token_states(middle[offset[i]], input_ids[offset[i]])
                                               for i in range(len(offset) - 1)])
        for name, term in extra.added.items():
            out[name] = term
            out["loss"] = out["loss"] + term
        out["pred_masks"] = pred_masks
        out["seg_states"] = [states[r, positions[r]] for r in range(states.shape[0])]
        out["family_losses"] = dict(extra.added)
        out["components"] = extra.components
        return out

    def _chosen_states(self, layers: tuple[torch.Tensor, ...], input_ids: torch.Tensor, seg_layers: torch.Tensor,
                       rows: torch.Tensor, choice: LayerChoice, picked: slice
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One image's n [SEG]s under a layer choice: SAM states [n, H], prompt states [n, H] and the image-token
        states of each one's prompt layer and row [n, P, H]."""
        index = torch.arange(seg_layers.shape[0], device=seg_layers.device)
        sim, sam = choice.similarity[picked], choice.sam[picked]
        image_states = [self.image_token_states(layers[int(l)][int(r)], input_ids[int(r)])
                        for l, r in zip(sim, rows)]
        stacked = torch.stack(image_states) if image_states else seg_layers.new_zeros((0, 0, seg_layers.shape[-1]))
        return seg_layers[index, sam], seg_layers[index, sim], stacked
