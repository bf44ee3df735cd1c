"""Shared test helpers: fixture paths, image reading, a ROS domain per test, one torch thread."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lisa_tiny_reference"
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# CI has 2 cores; test processes (and the nodes they start) each keep to one thread.
torch.set_num_threads(1)


def read_rgb(path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB (what the reference read with cv2 + BGR->RGB)."""
    return np.asarray(Image.open(path).convert("RGB")).copy()
