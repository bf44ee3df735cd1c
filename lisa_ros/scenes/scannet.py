"""Reader of a scene in ScanNet's exported frame layout (what ScanNet's SensReader writes, and synthetic.py).

    scene/color/N.jpg        colour frames (ScanNet: 1296x968)
    scene/depth/N.png        uint16 depth in millimetres, 0 = no reading (ScanNet: 640x480)
    scene/pose/N.txt         4x4 camera-to-world; ScanNet writes -inf rows for frames it could not track
    scene/intrinsic/intrinsic_color.txt, intrinsic_depth.txt     4x4, upper-left 3x3 = K of that image
    scene/intrinsic/extrinsic_color.txt, extrinsic_depth.txt     4x4 (optional; identity when absent)

Frames are numbered by file name and sorted numerically (10.jpg after 9.jpg). Pure NumPy/OpenCV, no ROS.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lisa_ros.geometry import CameraIntrinsics

DEPTH_SHIFT = 1000.0  # ScanNet depth PNG units per metre


def read_matrix(path: Path) -> np.ndarray:
    """A whitespace-separated text matrix (ScanNet's 4x4 intrinsic/extrinsic/pose files) as float64."""
    return np.loadtxt(path, dtype=np.float64, ndmin=2)


def _image_size(path: Path) -> tuple[int, int]:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return image.shape[1], image.shape[0]


@dataclass(frozen=True)
class ScanNetScene:
    """One scene folder. Use ScanNetScene.open(path)."""

    root: Path
    frame_ids: tuple[int, ...]  # sorted numerically
    color_intrinsics: CameraIntrinsics
    depth_intrinsics: CameraIntrinsics
    color_from_depth: np.ndarray  # 4x4: depth camera frame -> colour camera frame (identity: registered)

    @classmethod
    def open(cls, root) -> "ScanNetScene":
        root = Path(root)
        ids = sorted(int(p.stem) for p in (root / "color").glob("*.jpg") if p.stem.isdigit())
        if not ids:
            raise FileNotFoundError(f"no color/N.jpg frames in {root}")
        missing = [i for i in ids if not (root / "depth" / f"{i}.png").is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} frames of {root} have no depth (first: depth/{missing[0]}.png)")
        intrinsic = root / "intrinsic"
        color_k = CameraIntrinsics.from_matrix(read_matrix(intrinsic / "intrinsic_color.txt"),
                                               *_image_size(root / "color" / f"{ids[0]}.jpg"))
        depth_k = CameraIntrinsics.from_matrix(read_matrix(intrinsic / "intrinsic_depth.txt"),
                                               *_image_size(root / "depth" / f"{ids[0]}.png"))
        return cls(root, tuple(ids), color_k, depth_k, _color_from_depth(intrinsic))

    def __len__(self) -> int:
        return len(self.frame_ids)

    def color_path(self, frame_id: int) -> Path:
        return self.root / "color" / f"{frame_id}.jpg"

    def depth_path(self, frame_id: int) -> Path:
        return self.root / "depth" / f"{frame_id}.png"

    def read_color(self, frame_id: int) -> np.ndarray:
        """HxWx3 uint8 RGB."""
        bgr = cv2.imread(str(self.color_path(frame_id)), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read {self.color_path(frame_id)}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def color_bytes(self, frame_id: int) -> bytes:
        """The JPEG file as stored (to publish as a CompressedImage without re-encoding)."""
        return self.color_path(frame_id).read_bytes()

    def read_depth_mm(self, frame_id: int) -> np.ndarray:
        """HxW uint16 depth in millimetres, 0 = no reading."""
        depth = cv2.imread(str(self.depth_path(frame_id)), cv2.IMREAD_UNCHANGED)
        if depth is None or depth.dtype != np.uint16 or depth.ndim != 2:
            raise ValueError(f"{self.depth_path(frame_id)} is not a 16-bit single-channel png")
        return depth

    def read_depth(self, frame_id: int) -> np.ndarray:
        """HxW float32 depth in metres, NaN = no reading."""
        depth = self.read_depth_mm(frame_id).astype(np.float32) / np.float32(DEPTH_SHIFT)
        depth[depth <= 0] = np.nan
        return depth

    def pose(self, frame_id: int) -> np.ndarray | None:
        """4x4 camera-to-world pose (m), or None when missing or invalid (ScanNet's -inf / NaN poses)."""
        path = self.root / "pose" / f"{frame_id}.txt"
        if not path.is_file():
            return None
        pose = read_matrix(path)
        return pose if pose.shape == (4, 4) and np.isfinite(pose).all() else None


def _color_from_depth(intrinsic_dir: Path) -> np.ndarray:
    """inv(extrinsic_color) @ extrinsic_depth, reading each extrinsic as camera -> common sensor frame. ScanNet's
    exports carry identity for both (depth registered to colour); missing files count as identity."""
    def load(name: str) -> np.ndarray:
        path = intrinsic_dir / name
        return read_matrix(path) if path.is_file() else np.eye(4)

    return np.linalg.inv(load("extrinsic_color.txt")) @ load("extrinsic_depth.txt")
