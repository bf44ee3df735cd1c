"""The training data stream: data sources mixed at given rates, a deterministic function of (seed, step, rank).

`dataset` is the reference's "sem_seg||refer_seg||vqa||reason_seg" syntax with `sample_rates` (9:3:3:1 by
default), or "synthetic" (ReasonSeg-format scenes from training.synthetic, which also carry a query-kind label
for the optional probe). Each source lives under `data_root/<source>`.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from .config import TrainConfig
from .data.reason_seg import ReasonSegDataset, read_reason_seg_split
from .data.sample import Sample, merge_skipped
from .evaluate import EvalItem


def _reason_seg(root: Path, cfg: TrainConfig):
    return ReasonSegDataset(root / "reason_seg" / "train", answers=cfg.answers or None,
                            sentence_templates=cfg.sentence_templates or None)


def _synthetic(root: Path, cfg: TrainConfig):
    return ReasonSegDataset(root / "train", queries_per_image=1,
                            probe_key="query_kind_index" if cfg.probe_weight > 0 or cfg.opening_probe_weight > 0
                            else None,
                            presence_key="visible_kind_indices" if cfg.presence_weight > 0 else None,
                            answers=cfg.answers or None, sentence_templates=cfg.sentence_templates or None)


def _from_readers(name: str) -> Callable:
    def build(root: Path, cfg: TrainConfig):
        from .data import readers  # sem_seg / refer_seg / vqa readers

        return readers.build(name, root / name)
    return build


SOURCES: dict[str, Callable] = {"reason_seg": _reason_seg, "synthetic": _synthetic,
                                **{n: _from_readers(n) for n in ("sem_seg", "refer_seg", "vqa", "robot")}}


class MixedStream:
    """Samples for (step, micro-batch, rank): pick a source by rate, then a sample from it, all from one seeded RNG
    per micro-batch - so resuming at step k gives exactly the data a run that never stopped would have seen."""

    def __init__(self, sources: list, rates: list[float], seed: int):
        if len(sources) != len(rates):
            raise ValueError(f"{len(sources)} sources but {len(rates)} sample rates")
        total = float(sum(rates))
        self.sources, self.weights, self.seed = sources, [r / total for r in rates], seed

    def batch(self, step: int, micro: int, rank: int, batch_size: int) -> list[Sample]:
        rng = random.Random(f"{self.seed}:{step}:{micro}:{rank}")
        return [rng.choices(self.sources, self.weights)[0].sample(rng) for _ in range(batch_size)]

    def skipped(self) -> dict[str, int]:
        return merge_skipped(self.sources)


class ValidationSet:
    def __init__(self, folder: Path):
        self.folder = folder

    def samples(self, n: int) -> list[EvalItem]:
        return [EvalItem(r.name, r.image, r.query, r.is_sentence, r.gt)
                for r in read_reason_seg_split(self.folder, n)]


def build_training_data(cfg: TrainConfig, tokenizer=None) -> tuple[MixedStream, ValidationSet | None]:
    root = Path(cfg.data_root)
    names = cfg.dataset.split("||")
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ValueError(f"unknown data sources {unknown}; known: {sorted(SOURCES)}")
    rates = list(cfg.sample_rates)[: len(names)] if len(names) > 1 else [1.0]
    stream = MixedStream([SOURCES[n](root, cfg) for n in names], rates, cfg.seed)
    val = None
    if cfg.val_dataset:
        val = ValidationSet(Path(cfg.val_dataset))
    elif names == ["synthetic"] and (root / "val").is_dir():
        val = ValidationSet(root / "val")
    return stream, val
