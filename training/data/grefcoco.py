"""gRefCOCO (and REFER-layout sets with no-target expressions) for families with a [REJ] token (GSVA).

Layout: `grefs(unc).json` (refs whose `ann_id` is a list: several objects, or [-1] / [] for "not in the image")
and `instances.json` beside it; images in the COCO train2014 folder. A sample is ONE conversation about one image
asking for up to `queries_per_image` expressions at once; each answer slot is [SEG] (target mask = the union of its
objects) or [REJ] (all-zero target). Images whose sampled expressions are all absent are drawn again, as GSVA does.
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np

from lisa_model.constants import SEG_TOKEN

from .refer_seg import annotation_mask
from .sample import BadSample, Sample, count_skipped, read_rgb
from .templates import MULTI_TARGET_ANSWERS, MULTI_TARGET_QUESTIONS, REJ_TOKEN


def multi_target_turn(names: list[str], present: list[bool], question: int, answer: int) -> tuple[str, str]:
    """(user, assistant) of one multi-target question; `question` / `answer` index the templates."""
    names = [n.strip().strip(".") for n in names]
    start, template = MULTI_TARGET_ANSWERS[answer]
    slots = [template.format(name=n, slot=SEG_TOKEN if p else REJ_TOKEN) for n, p in zip(names, present)]
    user = MULTI_TARGET_QUESTIONS[question].format(names=", ".join(names).lower())
    return user, start + " " + ", ".join(slots) + "."


class GRefCocoDataset:
    """Samples of one split: one conversation per image over up to `queries_per_image` of its expressions."""

    source = "refer_seg"

    def __init__(self, root: str | Path, image_dir: str | Path, split: str = "train", queries_per_image: int = 3):
        root = Path(root)
        self.image_dir, self.queries_per_image = Path(image_dir), queries_per_image
        self.skipped: dict[str, int] = defaultdict(int)
        try:
            refs = json.loads((root / "grefs(unc).json").read_text())
            instances = json.loads((root / "instances.json").read_text())
        except (OSError, ValueError) as e:
            raise BadSample(f"{root}: unreadable gRefCOCO annotations ({e})") from None
        self.images = {im["id"]: im for im in instances["images"]}
        self.annotations = {a["id"]: a for a in instances["annotations"]}
        self.refs: dict[int, list] = defaultdict(list)
        for ref in refs:
            if ref.get("split") == split and ref["image_id"] in self.images:
                self.refs[ref["image_id"]].append(ref)
        self.image_ids = sorted(self.refs)
        if not self.image_ids:
            raise FileNotFoundError(f"no {split} references in {root / 'grefs(unc).json'}")

    def __len__(self) -> int:
        return len(self.image_ids)

    def target_mask(self, ann_ids: list[int], info: dict) -> np.ndarray:
        """uint8 HxW 0/1: the union of the referred objects (all zero for [-1] / [])."""
        mask = np.zeros((info["height"], info["width"]), np.uint8)
        for ann in ann_ids if isinstance(ann_ids, list) else [ann_ids]:
            if ann != -1:
                mask |= annotation_mask(self.annotations[ann]["segmentation"], info["height"], info["width"]) > 0
        return mask

    def sample(self, rng: random.Random) -> Sample:
        for _ in range(10):
            image_id = self.image_ids[rng.randrange(len(self.image_ids))]
            info = self.images[image_id]
            sents = [(s["sent"], ref["ann_id"]) for ref in self.refs[image_id] for s in ref["sentences"]]
            chosen = rng.sample(sents, min(self.queries_per_image, len(sents)))
            masks = [self.target_mask(ann, info) for _, ann in chosen]
            present = [bool(m.any()) for m in masks]
            if not any(present):
                self.skipped["no target present"] += 1
                continue
            try:
                image = read_rgb(self.image_dir / info["file_name"])
            except BadSample as e:
                count_skipped(self.skipped, "missing image", e)
                continue
            turn = multi_target_turn([t for t, _ in chosen], present, rng.randrange(len(MULTI_TARGET_QUESTIONS)),
                                     rng.randrange(len(MULTI_TARGET_ANSWERS)))
            return Sample(f"{image_id}", [[turn]], masks, self.source, self.image_dir / info["file_name"], image)
        raise RuntimeError(f"too many unusable gRefCOCO samples ({dict(self.skipped)})")
