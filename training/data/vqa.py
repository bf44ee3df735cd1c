"""Visual question answering: LLaVA-Instruct JSON (conversations of "human"/"gpt" turns about a COCO image).

No masks: these samples keep the language ability while the model learns [SEG]. As in LLaVA's preprocessing,
the image token is moved to the front of the first human turn.
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from lisa_model.constants import IMAGE_TOKEN

from .sample import BadSample, Sample, count_skipped, read_rgb


def to_turns(conversation: list[dict], source: str) -> list[tuple[str, str]]:
    """[{"from": "human"|"gpt", "value"}] -> (user, assistant) pairs, "<image>\\n" leading the first question."""
    if len(conversation) < 2 or len(conversation) % 2:
        raise BadSample(f"{source}: a conversation needs human/gpt pairs, got {len(conversation)} turns")
    turns = []
    for i in range(0, len(conversation), 2):
        human, gpt = conversation[i], conversation[i + 1]
        if human.get("from") != "human" or gpt.get("from") != "gpt":
            raise BadSample(f"{source}: turns must alternate human, gpt")
        question = human["value"].replace(IMAGE_TOKEN, "").strip()
        turns.append((IMAGE_TOKEN + "\n" + question if i == 0 else question, gpt["value"]))
    return turns


class VqaDataset:
    source = "vqa"

    def __init__(self, json_path: str | Path, image_dir: str | Path):
        path = Path(json_path)
        try:
            self.items = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise BadSample(f"{path}: unreadable ({e})") from None
        self.image_dir = Path(image_dir)
        self.source_name = str(path)
        self.skipped: dict[str, int] = defaultdict(int)

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, rng: random.Random) -> Sample:
        for _ in range(10):
            item = self.items[rng.randrange(len(self.items))]
            try:
                turns = to_turns(item["conversations"], f"{self.source_name}#{item.get('id')}")
                image = read_rgb(self.image_dir / item["image"])
            except (BadSample, KeyError) as e:
                count_skipped(self.skipped, "bad item", e)
                continue
            return Sample(str(item.get("id", item["image"])), [turns], [], self.source,
                          self.image_dir / item["image"], image)
        raise RuntimeError(f"too many unusable VQA items ({dict(self.skipped)})")
