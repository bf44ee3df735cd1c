"""GLaMM (mbzuai-oryx/groundingLMM: MBZUAI/GLaMM-GranD-Pretrained, -FullScope, -GCG, -RefSeg, -RegCap-*): LISA's
[SEG]-into-SAM recipe on LLaVA-1.5, whose answers name what each mask shows ("<p> a dog </p> [SEG]").

What differs from LISA (docs/families/glamm.md has the details):

- released as `GLaMMForCausalLM`; SAM is stored under `model.grounding_encoder.*` (LISA: `model.visual_model.*`),
  in float32 beside a bfloat16 language model (per-tensor dtypes are cast at load like any other);
- its tokenizer adds `<im_start>`, `<im_end>`, `<bbox>`, `<point>`, `[SEG]`, `<p>`, `</p>` in that order (ids
  are read from the checkpoint's tokenizer, never assumed);
- the first question reads "The <image> provides an overview of the picture.\\n{instruction}";
- mask k is labelled with the k-th `<p> ... </p>` phrase of the answer (stripped), as GLaMM's grounded-caption
  evaluation pairs them; a mask without a phrase gets "" (referring answers such as "Sure, it is [SEG]." have
  none); `plain_text` drops the tags;
- training cuts conversations at 1536 - (image tokens - 1) tokens (LISA: 512 - 255).

Everything else is LISA's: CLIP centre-cropped (at 336 px: the CLIP folder's preprocessor config), a two-layer
projector (read from the weights), the state before each [SEG] through `text_hidden_fcs`, SAM with no other
prompt, the same losses.

Not supported: region (box) inputs. The release carries a region encoder (`model.region_encoder.*`, ~290 M
parameters at full size) that turns user boxes into the embeddings of `<bbox>` tokens. This product takes no
boxes, so those weights are dropped at load (nothing else is silently accepted: any other unknown key is an
error). Without boxes the reference does not run its region encoder either - a `<bbox>` in the text then stays
an ordinary token - so every box-less question is answered exactly as by the reference.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

from ..constants import IMAGE_TOKEN
from .base import AnswerParts, Family

_PHRASE = re.compile(r"<p>(.*?)</p>")


class GLaMM(Family):
    name = "glamm"
    architectures = ("GLaMMForCausalLM",)
    extra_tokens = ("<bbox>", "<point>", "<p>", "</p>")
    key_rules = (
        (r"^model\.grounding_encoder\.", "sam."),
        (r"^model\.region_encoder\.", None),  # box inputs are not offered (see the module doc)
    )
    image_prefix = f"The {IMAGE_TOKEN} provides an overview of the picture.\n"

    def matches(self, raw_config: Mapping, keys: Iterable[str]) -> bool:
        return super().matches(raw_config, keys) or any(k.startswith("model.grounding_encoder.") for k in keys)

    def train_text_limit(self, config) -> int:
        # train.py's model_max_length 1536 minus the positions the image adds (575 at 336 px)
        return 1536 - (config.num_image_tokens - 1)

    def read_answer(self, ids: list[int], tokenizer) -> AnswerParts:
        """Mask k <-> k-th phrase: GLaMM's evaluation reads the phrases from the decoded answer (newlines
        removed, double spaces made single, non-greedy `<p>(.*?)</p>`, stripped) and pairs them by position."""
        known = [i for i in ids if 0 <= i < tokenizer.vocab_size]  # undecodable ids: the predictor notes them
        text = tokenizer.decode(known).replace("\n", "").replace("  ", " ")
        phrases = [p.strip() for p in _PHRASE.findall(text)]
        n = ids.count(tokenizer.seg_token_id)
        return AnswerParts(labels=(phrases + [""] * n)[:n])


GLAMM = GLaMM()
