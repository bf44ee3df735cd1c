"""Semantic segmentation as segmentation questions: ADE20K and COCO-Stuff label maps, at most 3 classes a sample.

Class lists are read from a file beside the data (the dataset's own list, or the reference's
`ade20k_classes.json` / `cocostuff_classes.txt`): a JSON list of names, or text lines "id: name" (first line a
header, as COCO-Stuff's). Label maps get the reference's remapping: ADE20K 0 (unlabelled) -> 255 and every other
id - 1; COCO-Stuff classes whose name contains "-" (merged "-other" / "-stuff" classes) -> 255.
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from .sample import BadSample, Sample, count_skipped, read_rgb
from .templates import ANSWERS, SHORT_QUESTIONS


def read_class_names(path: str | Path) -> list[str]:
    path = Path(path)
    if path.suffix == ".json":
        return [str(c) for c in json.loads(path.read_text())]
    lines = path.read_text().splitlines()[1:]
    return [ln.strip().split(": ")[-1] for ln in lines if ln.strip()]


def remap_labels(label: np.ndarray, dataset: str, classes: list[str]) -> np.ndarray:
    """The reference's label remapping (see the module doc); returns a new uint8 map, 255 = ignore."""
    label = label.astype(np.int64)
    if dataset == "ade20k":
        label = np.where(label == 0, 255, label - 1)
    elif dataset == "cocostuff":
        merged = [i for i, c in enumerate(classes) if "-" in c]
        label = np.where(np.isin(label, merged), 255, label)
    return label.astype(np.uint8)


class SemSegDataset:
    """(image, label map) pairs of one data set; a sample asks about up to `classes_per_sample` present classes."""

    source = "sem_seg"

    def __init__(self, dataset: str, pairs: list[tuple[Path, Path]], classes: list[str], classes_per_sample: int = 3):
        if dataset not in ("ade20k", "cocostuff"):
            raise ValueError(f"unknown semantic-segmentation data set {dataset!r}")
        if not pairs:
            raise FileNotFoundError(f"no {dataset} images with label maps")
        self.dataset, self.pairs, self.classes = dataset, pairs, classes
        self.classes_per_sample = classes_per_sample
        self.skipped: dict[str, int] = defaultdict(int)

    @classmethod
    def ade20k(cls, root: str | Path, classes_file: str | Path) -> "SemSegDataset":
        """ADE20K's release layout: images/training/*.jpg, annotations/training/*.png."""
        root = Path(root)
        images = sorted((root / "images" / "training").glob("*.jpg"))
        pairs = [(p, root / "annotations" / "training" / (p.stem + ".png")) for p in images]
        return cls("ade20k", pairs, read_class_names(classes_file))

    @classmethod
    def cocostuff(cls, label_dir: str | Path, image_dir: str | Path, classes_file: str | Path) -> "SemSegDataset":
        """COCO-Stuff label maps (train2017/*.png) beside the COCO images (train2017/*.jpg)."""
        labels = sorted(Path(label_dir).glob("*.png"))
        pairs = [(Path(image_dir) / (p.stem + ".jpg"), p) for p in labels]
        return cls("cocostuff", pairs, read_class_names(classes_file))

    def __len__(self) -> int:
        return len(self.pairs)

    def sample(self, rng: random.Random) -> Sample:
        for _ in range(10):
            image_path, label_path = self.pairs[rng.randrange(len(self.pairs))]
            try:
                image = read_rgb(image_path)
                label = remap_labels(np.asarray(Image.open(label_path)), self.dataset, self.classes)
            except (BadSample, OSError) as e:
                count_skipped(self.skipped, "unreadable", f"{label_path}: {e}")
                continue
            present = [int(c) for c in np.unique(label) if c != 255 and c < len(self.classes)]
            if not present:
                self.skipped["no labelled class"] += 1
                continue
            chosen = rng.sample(present, min(self.classes_per_sample, len(present)))
            convs = [[(rng.choice(SHORT_QUESTIONS).format(class_name=self.classes[c].lower()), rng.choice(ANSWERS))]
                     for c in chosen]
            masks = [(label == c).astype(np.uint8) for c in chosen]
            return Sample(image_path.stem, convs, masks, self.source, image_path, image)
        raise RuntimeError(f"too many unusable {self.dataset} samples ({dict(self.skipped)})")
