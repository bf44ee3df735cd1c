"""What every reader yields: one image, its conversations, and one target mask per [SEG]."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)


class BadSample(ValueError):
    """A data file that cannot be used; the message names the file. Readers skip it and count it."""


@dataclass
class Sample:
    """image_path (read lazily) or image (HxWx3 uint8 RGB); conversations: each a list of (user, assistant)
    turns, the first user turn starting with "<image>\\n"; masks: uint8 HxW (1 target, 0 background, 255 ignore),
    one per [SEG] over all conversations, in order; probe_targets: optional class per mask (training probe);
    presence_targets: optional classes in view (training-only presence probe; None: not annotated);
    query_class: optional class of what the questions ask for, present or not (training-only opening probe)."""

    name: str
    conversations: list[list[tuple[str, str]]]
    masks: list[np.ndarray]
    source: str
    image_path: Path | None = None
    image: np.ndarray | None = None
    probe_targets: list[int] = field(default_factory=list)
    presence_targets: list[int] | None = None
    query_class: int | None = None

    def load_image(self) -> np.ndarray:
        if self.image is not None:
            return self.image
        return read_rgb(self.image_path)


def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB (cv2 read + BGR->RGB, as the reference reads images); BadSample when unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise BadSample(f"{path}: missing or unreadable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def count_skipped(skipped: dict[str, int] | None, reason: str, error: Exception | str) -> None:
    """Log a data file a reader skips and count it under `reason` (no count when `skipped` is None)."""
    log.warning("skipped: %s", error)
    if skipped is not None:
        skipped[reason] = skipped.get(reason, 0) + 1


def merge_skipped(sources) -> dict[str, int]:
    """Skip counts (reason -> files) summed over data sources that keep a `skipped` dict."""
    out: dict[str, int] = {}
    for source in sources:
        for reason, n in getattr(source, "skipped", {}).items():
            out[reason] = out.get(reason, 0) + n
    return out
