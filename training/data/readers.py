"""Building a data source by name from its folder under `data_root` (the layouts each reader documents).

    data_root/reason_seg/train/*.jpg + *.json            ReasonSeg
    data_root/sem_seg/ade20k/{images,annotations}/training + ade20k_classes.json
    data_root/sem_seg/cocostuff/train2017/*.png + cocostuff_classes.txt, images in data_root/coco/train2017
    data_root/refer_seg/{refcoco,refcoco+,refcocog,refclef}/ + images/{mscoco/images/train2014,saiapr_tc-12}
    data_root/refer_seg/grefcoco/grefs(unc).json + instances.json (answers with [REJ]: GSVA's family only)
    data_root/vqa/llava_instruct_150k.json, images in data_root/coco/train2017
    data_root/robot/**/  frames (*.jpg) with ReasonSeg JSONs beside them (e.g. a ScanNet-style scene's color/)
"""
from __future__ import annotations

import random
from pathlib import Path

from .grefcoco import GRefCocoDataset
from .reason_seg import ReasonSegDataset
from .sample import merge_skipped
from .refer_seg import ReferSegDataset
from .sem_seg import SemSegDataset
from .vqa import VqaDataset


class Union:
    """Several data sets of one source, picked uniformly (as the reference mixes e.g. ADE20K and COCO-Stuff)."""

    def __init__(self, parts: list):
        if not parts:
            raise FileNotFoundError("no data set of this source was found")
        self.parts = parts

    def sample(self, rng: random.Random):
        return rng.choice(self.parts).sample(rng)

    @property
    def skipped(self) -> dict[str, int]:
        return merge_skipped(self.parts)


def build(name: str, folder: Path):
    root = folder.parent
    if name == "sem_seg":
        parts = []
        if (folder / "ade20k").is_dir():
            parts.append(SemSegDataset.ade20k(folder / "ade20k", folder / "ade20k" / "ade20k_classes.json"))
        if (folder / "cocostuff").is_dir():
            parts.append(SemSegDataset.cocostuff(folder / "cocostuff" / "train2017", root / "coco" / "train2017",
                                                 folder / "cocostuff" / "cocostuff_classes.txt"))
        return Union(parts)
    if name == "refer_seg":
        images = {"refclef": folder / "images" / "saiapr_tc-12"}
        coco = folder / "images" / "mscoco" / "images" / "train2014"
        parts = [ReferSegDataset(folder, d, images.get(d, coco))
                 for d in ("refclef", "refcoco", "refcoco+", "refcocog") if (folder / d).is_dir()]
        if (folder / "grefcoco").is_dir():
            parts.append(GRefCocoDataset(folder / "grefcoco", coco))
        return Union(parts)
    if name == "vqa":
        return VqaDataset(folder / "llava_instruct_150k.json", root / "coco" / "train2017")
    if name == "robot":
        return Union([ReasonSegDataset(d) for d in sorted({p.parent for p in folder.rglob("*.json")})])
    raise ValueError(f"unknown data source {name!r}")
