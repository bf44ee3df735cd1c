"""Referring segmentation in the REFER layout: refCOCO, refCOCO+ (`refs(unc).p`), refCOCOg (`refs(umd).p`),
refCLEF (`refs(unc).p`), each with `instances.json`. Masks from COCO polygons / RLE via pycocotools, as the
reference decodes them; the pickles are read as plain data only (training.data.safe_pickle)."""
from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

from .safe_pickle import load_data_pickle
from .sample import BadSample, Sample, count_skipped, read_rgb
from .templates import ANSWERS, SHORT_QUESTIONS

SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "refclef": "unc"}


def annotation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """uint8 HxW (0/1) from a COCO segmentation: polygon list, uncompressed or compressed RLE."""
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), np.uint8)
        rles = coco_mask.frPyObjects(segmentation, height, width)
        rle = coco_mask.merge(rles)
    elif isinstance(segmentation.get("counts"), list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode()
    m = coco_mask.decode(rle)
    return (m.max(axis=2) if m.ndim == 3 else m).astype(np.uint8)


class ReferSegDataset:
    """Samples of one REFER dataset split: up to `queries_per_image` referring expressions of one image."""

    source = "refer_seg"

    def __init__(self, refer_root: str | Path, dataset: str, image_dir: str | Path, split: str = "train",
                 queries_per_image: int = 3):
        root = Path(refer_root) / dataset
        self.image_dir = Path(image_dir)
        self.queries_per_image = queries_per_image
        self.skipped: dict[str, int] = defaultdict(int)
        refs_path = root / f"refs({SPLIT_BY.get(dataset, 'unc')}).p"
        refs = load_data_pickle(refs_path)
        try:
            instances = json.loads((root / "instances.json").read_text())
        except (OSError, ValueError) as e:
            raise BadSample(f"{root / 'instances.json'}: unreadable ({e})") from None
        self.images = {im["id"]: im for im in instances["images"]}
        self.annotations = {a["id"]: a for a in instances["annotations"]}
        by_image: dict[int, list] = defaultdict(list)
        for ref in refs:
            if ref.get("split") == split:
                by_image[ref["image_id"]].append(ref)
        self.image_ids = sorted(i for i in by_image if i in self.images)
        self.refs = by_image
        if not self.image_ids:
            raise FileNotFoundError(f"no {split} references in {refs_path}")

    def __len__(self) -> int:
        return len(self.image_ids)

    def sample(self, rng: random.Random) -> Sample:
        for _ in range(10):
            image_id = self.image_ids[rng.randrange(len(self.image_ids))]
            info = self.images[image_id]
            try:
                image = read_rgb(self.image_dir / info["file_name"])
            except BadSample as e:
                count_skipped(self.skipped, "missing image", e)
                continue
            sents = [(s["sent"].strip(), ref["ann_id"]) for ref in self.refs[image_id] for s in ref["sentences"]]
            chosen = rng.sample(sents, min(self.queries_per_image, len(sents)))
            convs = [[(rng.choice(SHORT_QUESTIONS).format(class_name=text.lower()), rng.choice(ANSWERS))]
                     for text, _ in chosen]
            masks = [annotation_mask(self.annotations[ann]["segmentation"], info["height"], info["width"])
                     for _, ann in chosen]
            return Sample(f"{image_id}", convs, masks, self.source, self.image_dir / info["file_name"], image)
        raise RuntimeError(f"too many unusable referring samples ({dict(self.skipped)})")
