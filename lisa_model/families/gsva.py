"""GSVA (LeapLabTHU/GSVA, Xia et al. CVPR 2024): LISA with one [SEG] per referred target and a second task token,
[REJ], for a target that is not in the image. docs/families/gsva.md has the reference's semantics; here is only
what differs from LISA, and which hook carries it:

- Release (`matches`, `unwrap_state`, `bare_release_config`): one bare state dict of the peft-wrapped training
  model - keys `base_model.model.*`, LoRA pairs unmerged, CLIP and the (re-initialised) projector inside, no
  config.json. Loaded with `from_pretrained(bin, base_model=<LLaVA folder>, vision_tower=<CLIP folder>)`: the
  prefix is stripped, LoRA merged as W + alpha / r * B @ A with r from the shapes and alpha from
  family_options["lora_alpha"] - 16 unless given (GSVA's main.py default; it is stored nowhere, so a release
  trained with another alpha needs `family_options={"lora_alpha": ...}`). <im_start>/<im_end> are always used.
- Tokens [SEG], [REJ], <im_start>, <im_end> in that order (`extra_tokens`); transformers 4.44's spacing, which
  keeps the whitespace next to added tokens (`keeps_whitespace`).
- Answers (`read_answer`): a [REJ] slot is a rejection - an entry of `rejected` (the phrase before it) and no
  mask; each [SEG] slot gets a mask and its phrase as label.
- Masks of an answer (`answer_mask_states`): as GSVA's evaluation (`eval_gres`, reeval=True) computes them -
  every [REJ] of prompt + answer is read as [SEG] and the language model runs once more; each [SEG] slot's state
  comes from that pass. Choice: eval_gres is what GSVA's reported gRefCOCO numbers use; the states gathered while
  decoding (`validate`'s single pass) differ for a [SEG] that follows a [REJ]. Without a [REJ] before a [SEG]
  both passes agree and no second pass runs.
- Training (`loss_masks`, `train_text_limit`): only [SEG] slots are decoded; a [REJ] target is predicted as
  all-zero logits against its all-zero target (a constant ln 2 BCE and ~1 DICE that count in the normaliser): it
  learns through CE only. Training ids are cut at 1022, not LISA's 257.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping

import torch

from ..checkpoint import CheckpointError, merge_lora
from .base import AnswerParts, Family

if TYPE_CHECKING:
    from ..modeling.lisa import LisaForSegmentation

REJ_TOKEN = "[REJ]"
PEFT_PREFIX = "base_model.model."
LORA_ALPHA = 16.0  # GSVA main.py's --lora_alpha default; the eval scripts never change it
# Answer templates around a target's phrase (constants.py of GSVA, in our words): stripped to get the label.
_LEAD = re.compile(r"^(?:sure,?\s*)?(?:they are|the segmentation results are|the (?:mask|segmentation) of|"
                   r"the referred)\s+", re.IGNORECASE)
_TAIL = re.compile(r"(?:\s+is)?[\s:.,;]*$")


@dataclass
class SlotPass:
    """GSVA's teacher-forced forward on given ids. Per slot ([SEG] / [REJ] of the ids, in order): `given` token,
    `decision` (argmax one position earlier, binary: a [SEG] slot stays [SEG] only on an exact [SEG] argmax, a
    [REJ] slot likewise), `positions` [n] of the spliced states and `states` [n, H] that decode its mask."""

    given: list[int]
    decisions: list[int]
    positions: torch.Tensor
    states: torch.Tensor


class Gsva(Family):
    name = "gsva"
    extra_tokens = (REJ_TOKEN,)
    keeps_whitespace = True
    def train_text_limit(self, config) -> int:
        return 1024 - 2  # GSVA's collate: model_max_length 1024 - (Np - 1), its Np being 3

    def matches(self, raw_config: Mapping, keys: Iterable[str]) -> bool:
        keys = list(keys)
        return (any(k.startswith(PEFT_PREFIX + "model.visual_model.") for k in keys)
                and any(".lora_A." in k for k in keys))

    def config_options(self, raw_config: Mapping, keys: Iterable[str]) -> dict:
        return {"lora_alpha": LORA_ALPHA}

    def bare_release_config(self, raw: Mapping) -> dict:
        # the base LLaVA v1 config says mm_use_im_start_end false; GSVA's --use_mm_start_end defaults to true
        return {**raw, "mm_use_im_start_end": True}

    def unwrap_state(self, state: dict[str, torch.Tensor], options: Mapping, where: str = "checkpoint"
                     ) -> dict[str, torch.Tensor]:
        stripped = {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()}
        return merge_lora(stripped, float((options or {}).get("lora_alpha", LORA_ALPHA)), where)

    def answer_mask_states(self, model: "LisaForSegmentation", input_ids: torch.Tensor, image_tokens: torch.Tensor,
                           states: torch.Tensor) -> torch.Tensor:
        seg, rej = model.config.seg_token_id, self.token_id(model.config, REJ_TOKEN)
        row = input_ids[0].tolist()
        last_seg = max((i for i, t in enumerate(row) if t == seg), default=-1)
        if rej not in row[:last_seg]:
            return states  # no [SEG] follows a [REJ]: the second pass would give the same states
        reeval = torch.where(input_ids == rej, seg, input_ids)
        return model.forced_states(reeval, image_tokens)[0, model.seg_state_positions(input_ids)[0]]

    def loss_masks(self, model: "LisaForSegmentation", seg_logits: torch.Tensor, input_ids: torch.Tensor,
                   gt_masks: torch.Tensor) -> torch.Tensor:
        seg, rej = model.config.seg_token_id, self.token_id(model.config, REJ_TOKEN)
        slots = input_ids[(input_ids == seg) | (input_ids == rej)]  # row-major: the conversations' slot order
        is_seg = slots == seg
        if len(slots) != gt_masks.shape[0] or int(is_seg.sum()) != seg_logits.shape[0]:
            raise ValueError(f"{len(slots)} [SEG]/[REJ] slots ({int(is_seg.sum())} [SEG]) but {gt_masks.shape[0]} "
                             f"target masks and {seg_logits.shape[0]} [SEG] masks")
        out = seg_logits.new_zeros(gt_masks.shape)
        out[is_seg] = seg_logits
        return out

    def read_answer(self, ids: list[int], tokenizer) -> AnswerParts:
        seg, rej = tokenizer.seg_token_id, tokenizer.convert_tokens_to_ids(REJ_TOKEN)
        parts, start = AnswerParts(), 0
        for k, token in enumerate(ids):
            if token in (seg, rej):
                phrase = target_phrase(tokenizer.decode(ids[start:k]))
                (parts.labels if token == seg else parts.rejected).append(phrase)
                start = k + 1
        return parts


def target_phrase(text: str) -> str:
    """The referred phrase in the text before a slot ("Sure, the mask of the red ball is" -> "the red ball")."""
    last = text.rsplit(",", 1)[-1].strip()
    return _TAIL.sub("", _LEAD.sub("", last)).strip()


@torch.no_grad()
def slot_pass(model: "LisaForSegmentation", input_ids: torch.Tensor, image_tokens: torch.Tensor,
              reeval: bool = True) -> SlotPass:
    """GSVA's teacher-forced `model_forward(inference=True)` on input_ids [1, L] (one image placeholder) with
    image_tokens [1, P, H]: decisions from the given ids; states from the same pass (reeval=False, `validate`)
    or from a second pass with every [REJ] read as [SEG] (reeval=True, `eval_gres`)."""
    seg, rej = model.config.seg_token_id, Family.token_id(model.config, REJ_TOKEN)
    row = input_ids[0]
    at = ((row == seg) | (row == rej)).nonzero().flatten()
    if (at == 0).any():
        raise CheckpointError("a [SEG]/[REJ] slot at position 0 has no state before it")
    positions = model.expanded_positions(row, at - 1, model.config.num_image_tokens)
    states = model.forced_states(input_ids, image_tokens)[0]
    argmax = model.lm_head(states[positions]).float().argmax(-1)
    given = row[at]
    keep = torch.where(given == seg, argmax == seg, argmax == rej)
    decisions = torch.where(keep, given, torch.where(given == seg, rej, seg))
    if reeval and bool((given == rej).any()):
        states = model.forced_states(torch.where(input_ids == rej, seg, input_ids), image_tokens)[0]
    return SlotPass(given.tolist(), decisions.tolist(), positions, states[positions])


GSVA = Gsva()
