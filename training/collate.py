"""Samples -> one training batch, as the reference's collate does it.

Each sample is one image with one or more conversations; every [SEG] in a conversation's answers has one
ground-truth mask, in order. Conversations of image i occupy rows offset[i]:offset[i+1] of the text tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from lisa_model.conversation import build_conversation
from lisa_model.families import Family
from lisa_model.families.lisa import LISA
from lisa_model.preprocessing import ClipPreprocessor, SamPreprocessor
from lisa_model.tokenization import LisaTokenizer, collate_conversations


@dataclass
class Batch:
    clip_pixels: torch.Tensor  # [B, 3, 224, 224]
    sam_pixels: torch.Tensor  # [B, 3, 1024, 1024]
    input_ids: torch.Tensor  # [R, L] with one IMAGE_TOKEN_INDEX per row
    labels: torch.Tensor  # [R, L], IGNORE_INDEX outside the answers
    attention_mask: torch.Tensor  # [R, L]
    offset: list[int]  # B + 1 row offsets
    gt_masks: list[torch.Tensor]  # B x [n_i, H_i, W_i] float 0/1
    resize_list: list[tuple[int, int]]  # SAM-resized (h, w) per image
    probe_targets: torch.Tensor | None = None  # [total [SEG]] class index per mask (training-only probe)
    patch_mask: torch.Tensor | None = None  # [B, 1 + P] bool: the family's CLIP patch mask (None: all patches)
    presence_targets: list[list[int]] | None = None  # B x classes in view (training-only presence probe)
    query_classes: torch.Tensor | None = None  # [R] class asked for per row (training-only opening probe)

    def to(self, device) -> "Batch":
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return Batch(move(self.clip_pixels), move(self.sam_pixels), move(self.input_ids), move(self.labels),
                     move(self.attention_mask), self.offset, [move(m) for m in self.gt_masks], self.resize_list,
                     move(self.probe_targets), move(self.patch_mask), self.presence_targets,
                     move(self.query_classes))


# image -> (CLIP pixels [1, 3, S, S], valid (h, w) in the square or None, patch mask [1, 1 + P] or None)
ClipInput = Callable[[np.ndarray], tuple[torch.Tensor, tuple[int, int] | None, torch.Tensor | None]]


class Collator:
    def __init__(self, tokenizer: LisaTokenizer, template: str, clip: ClipPreprocessor, sam: SamPreprocessor,
                 use_im_start_end: bool = True, truncate_len: int | None = 512 - 255, family: Family = LISA,
                 clip_input: ClipInput | None = None):
        self.tokenizer, self.template = tokenizer, template
        self.clip, self.sam = clip, sam
        # the model's own CLIP input (LisaSegmenter.clip_input: padded square + patch mask for UGround / READ), so
        # training sees images as inference does; None: `clip` (LISA's centre crop)
        self.clip_input = clip_input
        # The reference truncates text to model_max_length - 255 (room for the image's 256 tokens).
        self.use_im_start_end, self.truncate_len = use_im_start_end, truncate_len
        self.family = family  # samples ask LISA's way ("<image>\n" + question); the family may phrase it otherwise

    def __call__(self, samples: list) -> Batch:
        clip, sam, resize, masks, texts, offset, probes, patches, in_view, asked = [], [], [], [], [], [0], [], [], [], []
        for s in samples:
            image = s.load_image() if hasattr(s, "load_image") else s.image
            if self.clip_input is not None:
                pixels, _, patch = self.clip_input(image)
                clip.append(pixels)
                patches.append(patch)
            else:
                clip.append(self.clip(image))
            pixels, size = self.sam(image)
            sam.append(pixels)
            resize.append(size)
            h, w = image.shape[:2]
            gts = [np.asarray(m) == 1 for m in s.masks]  # 255 (ignore) counts as background, as the reference
            masks.append(torch.from_numpy(np.stack(gts).astype(np.float32)) if gts else torch.zeros((0, h, w)))
            texts += [build_conversation([(self.family.first_question(turns[0][0]), turns[0][1]), *turns[1:]],
                                         self.template) for turns in s.conversations]
            offset.append(offset[-1] + len(s.conversations))
            probes.extend(getattr(s, "probe_targets", None) or [])
            in_view.append(getattr(s, "presence_targets", None))
            asked += [getattr(s, "query_class", None)] * len(s.conversations)
        text = collate_conversations(self.tokenizer, texts, self.template, self.use_im_start_end, self.truncate_len)
        return Batch(torch.cat(clip), torch.cat(sam), text["input_ids"], text["labels"],
                     text["attention_mask"].long(), offset, masks, resize,
                     torch.tensor(probes, dtype=torch.long) if probes else None,
                     torch.cat(patches) if patches and patches[0] is not None else None,
                     in_view if all(v is not None for v in in_view) else None,
                     torch.tensor(asked, dtype=torch.long) if asked and None not in asked else None)
