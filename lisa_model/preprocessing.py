"""Image -> model inputs: CLIP pixels for the LLaVA side, SAM pixels for the mask side.

Both follow the reference bit for bit, which is why they resize with PIL: a cv2 bicubic resize is up to 2.6 grey
levels off for CLIP (enough to flip greedy ids on random weights) and cv2 bilinear moves SAM mask logits by 3.7e-3.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .modeling.sam import PIXEL_MEAN, PIXEL_STD

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipPreprocessor:
    """CLIP's processor: shortest edge -> `size` (bicubic), centre crop `crop`, x/255, mean/std normalise."""

    size: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    @classmethod
    def from_pretrained(cls, folder: str | Path | None) -> "ClipPreprocessor":
        """Read `preprocessor_config.json` of a CLIP folder; defaults (CLIP-L/14 224) when there is none."""
        path = Path(folder) / "preprocessor_config.json" if folder else None
        if path is None or not path.is_file():
            return cls()
        cfg = json.loads(path.read_text())
        size = cfg.get("size", 224)
        size = size.get("shortest_edge", 224) if isinstance(size, dict) else int(size)
        crop = cfg.get("crop_size", size)
        crop = crop.get("height", size) if isinstance(crop, dict) else int(crop)
        return cls(size=int(size), crop=int(crop), mean=tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)),
                   std=tuple(cfg.get("image_std", OPENAI_CLIP_STD)))

    def save(self, folder: str | Path) -> None:
        """Write preprocessor_config.json in the CLIPImageProcessor format (readable by transformers too)."""
        cfg = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": self.size},
               "resample": 3, "do_center_crop": True, "crop_size": {"height": self.crop, "width": self.crop},
               "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(self.mean),
               "image_std": list(self.std), "do_convert_rgb": True}
        (Path(folder) / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2))

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """image: HxWx3 uint8 RGB -> [1, 3, crop, crop] float32."""
        h, w = image.shape[:2]
        # The short side becomes `size`; the long side is truncated, not rounded (640x480 -> 298x224).
        if h <= w:
            new_h, new_w = self.size, int(self.size * w / h)
        else:
            new_h, new_w = int(self.size * h / w), self.size
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))
        top, left = (new_h - self.crop) // 2, (new_w - self.crop) // 2
        crop = resized[top: top + self.crop, left: left + self.crop]
        # x/255 in float64 then float32, then float32 normalisation - the processor's order of rounding.
        x = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def sam_resize_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """SAM's ResizeLongestSide target (h, w): scale so the long side is `long_side`, sides rounded half up."""
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


@dataclass(frozen=True)
class SamPreprocessor:
    """SAM's input: longest side -> `image_size` (PIL bilinear), normalise, zero-pad right/bottom to a square."""

    image_size: int = 1024

    def check_size(self, h: int, w: int) -> None:
        """Refuse (ValueError about the image) a shape whose shorter side SAM's resize would round to 0 px."""
        if min(sam_resize_shape(h, w, self.image_size)) >= 1:
            return
        need = -(-max(h, w) // (2 * self.image_size))  # the shorter side must round to >= 1 px
        raise ValueError(f"image {w}x{h} (width x height) is too elongated: SAM scales its longer side to "
                         f"{self.image_size} px, which leaves the shorter side at 0 px; the shorter side must be "
                         f"at least {need} px for this length (aspect ratio up to about {2 * self.image_size}:1)")

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """image: HxWx3 uint8 RGB -> ([1, 3, S, S] float32, resized (h, w) before padding)."""
        h, w = sam_resize_shape(*image.shape[:2], self.image_size)
        resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        x = torch.from_numpy(np.array(resized)).permute(2, 0, 1).float()
        mean = torch.tensor(PIXEL_MEAN).view(-1, 1, 1)
        std = torch.tensor(PIXEL_STD).view(-1, 1, 1)
        x = (x - mean) / std
        x = torch.nn.functional.pad(x, (0, self.image_size - w, 0, self.image_size - h))
        return x[None], (h, w)


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an HxWx3 uint8 RGB array (the public API's image type); raise ValueError otherwise."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 RGB, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    return np.ascontiguousarray(image)
