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

# No test may download anything: with a network, the hub-id tests would fetch LISA-7B and CLIP-L instead of failing
# fast. Child processes (nodes, CLI runs) inherit this.
os.environ["HF_HUB_OFFLINE"] = "1"


def read_rgb(path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB (what the reference read with cv2 + BGR->RGB)."""
    return np.asarray(Image.open(path).convert("RGB")).copy()
