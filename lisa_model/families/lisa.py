"""LISA (xinlai/LISA-7B-v1, -13B-llama2, -explanatory) and LISA++ (Senqiao/LISA_Plus_7b): the base behaviour.

Both are released as `LISAForCausalLM`; LISA++ differs only in its LLaVA-1.5 base (two-layer projector), which the
loader reads from the weights, and in answering with several [SEG] for several instances, which every family
handles.

One option of our own, for models we train (family_options {"pad_clip_image": true}): CLIP gets the whole frame
padded to its square, by the recipe UGround and READ use, instead of LISA's centre crop. With the crop, a 4:3
camera frame's outer eighths on each side reach SAM only, so the language model, which decides between "Sure" and
"not here", cannot see what stands there. Released LISA checkpoints never set it: their CLIP input stays the crop.
"""
from collections.abc import Mapping

from .base import Family

PAD_CLIP_IMAGE = "pad_clip_image"


class Lisa(Family):
    name = "lisa"
    architectures = ("LISAForCausalLM",)

    def clip_pads_image(self, config) -> bool:
        return bool((config.family_options or {}).get(PAD_CLIP_IMAGE, False))

    def configure_training(self, model, options: Mapping) -> None:
        unknown = sorted(set(options) - {PAD_CLIP_IMAGE})
        if unknown:
            raise ValueError(f"LISA's only training option is {PAD_CLIP_IMAGE} (got {unknown})")
        if options:
            model.config.family_options = {**(model.config.family_options or {}), **options}


LISA = Lisa()
