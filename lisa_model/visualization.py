"""Drawing results: masks coloured over the image with the answer as a caption (CLI output, ROS overlay topic)."""
from __future__ import annotations

import textwrap

import cv2
import numpy as np

# Distinct colours (RGB) for successive masks.
PALETTE = np.array([(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)], np.uint8)


def mask_colour(index: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in PALETTE[index % len(PALETTE)])


def draw_overlay(image: np.ndarray, masks: np.ndarray, caption: str = "", alpha: float = 0.5,
                 labels: list[str] | None = None) -> np.ndarray:
    """image: HxWx3 uint8 RGB; masks: bool [N, H, W] -> HxWx3 uint8 RGB with masks blended and outlined,
    each mask's label (the phrase it grounds, when the model gives one) written at its top-left, and `caption`
    wrapped in a dark band at the top."""
    out = image.copy()
    for i, mask in enumerate(masks):
        if not mask.any():
            continue
        colour = np.array(mask_colour(i), np.float32)
        out[mask] = (out[mask].astype(np.float32) * (1 - alpha) + colour * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, mask_colour(i), max(1, image.shape[1] // 320))
        if labels and i < len(labels) and labels[i]:
            ys, xs = np.nonzero(mask)
            scale = max(0.35, image.shape[1] / 1600)
            cv2.putText(out, labels[i].encode("ascii", "replace").decode(), (int(xs.min()), max(12, int(ys.min()))),
                        cv2.FONT_HERSHEY_SIMPLEX, scale, mask_colour(i), 1, cv2.LINE_AA)
    if caption:
        out = _caption(out, caption)
    return out


def _caption(image: np.ndarray, text: str) -> np.ndarray:
    h, w = image.shape[:2]
    scale = max(0.35, w / 1400)
    thickness = 1
    (cw, ch), base = cv2.getTextSize("M", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    lines = textwrap.wrap(text.replace("\n", " "), width=max(10, w // max(cw, 1) - 2))[:4]
    band = (ch + base + 4) * len(lines) + 4
    out = image.copy()
    out[:band] = (out[:band].astype(np.float32) * 0.35).astype(np.uint8)
    for i, line in enumerate(lines):
        y = 4 + (i + 1) * (ch + base + 4) - base
        # OpenCV's Hershey fonts are ASCII-only: other characters become '?'.
        safe = line.encode("ascii", "replace").decode()
        cv2.putText(out, safe, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out
