"""ReasonSeg with explanations (the reference's explanatory JSON: [{"image": name, "query", "outputs"}, ...]).

For an image that has an explanation, with probability `text_only` (0.1) the sample is a text-only answer (the
explanation, no mask); otherwise the question asks "Please output segmentation mask and explain why." (or a
variant) and the answer is "{answer} {explanation}". Images without an explanation train as plain ReasonSeg.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from lisa_model.constants import IMAGE_TOKEN

from .reason_seg import ReasonSegDataset
from .sample import Sample
from .templates import ANSWERS, EXPLANATORY_QUESTIONS


class ExplanatoryReasonSegDataset(ReasonSegDataset):
    source = "reason_seg_explanatory"

    def __init__(self, folder: str | Path, explanatory_json: str | Path, text_only: float = 0.1, **kwargs):
        super().__init__(folder, **kwargs)
        items = json.loads(Path(explanatory_json).read_text())
        self.explanations = {item["image"]: item["outputs"] for item in items}
        self.text_only = text_only

    def sample(self, rng: random.Random) -> Sample:
        sample = super().sample(rng)
        explanation = self.explanations.get(sample.image_path.name if sample.image_path else "")
        if explanation is None:
            return sample
        query = sample.conversations[0][0][0].split("\n", 1)[-1]  # the first question, for its subject text
        if rng.random() < self.text_only:
            return Sample(sample.name, [[(IMAGE_TOKEN + "\n" + query, explanation)]], [], self.source,
                          sample.image_path, sample.image)
        question = f"{IMAGE_TOKEN}\n{query} {rng.choice(EXPLANATORY_QUESTIONS)}"
        answer = f"{rng.choice(ANSWERS)} {explanation}"
        return Sample(sample.name, [[(question, answer)]], sample.masks[:1], self.source, sample.image_path,
                      sample.image)
