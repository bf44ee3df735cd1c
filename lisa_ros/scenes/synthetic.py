"""A small synthetic indoor scene with known geometry, written in ScanNet's exported frame layout.

    python -m lisa_ros.scenes.synthetic OUT_DIR [--frames 4]

A room (floor, ceiling, three walls) with a few boxes is ray-cast analytically - no mesh, no renderer - into
colour and depth images of different resolution and calibration, like ScanNet's 1296x968 colour / 640x480 depth
(default: a quarter of each, 324x242 / 160x120). Because every depth value is an exact ray/plane intersection,
tests can check back-projection against ground truth to millimetres.

Layout written (ScanNet's SensReader export, plus instance masks and a ground-truth JSON):
    color/N.jpg  depth/N.png (uint16 mm, 0 = none)  pose/N.txt (4x4 camera-to-world)  instance/N.png (uint8 ids)
    intrinsic/intrinsic_color.txt  intrinsic/intrinsic_depth.txt  intrinsic/extrinsic_color.txt
    intrinsic/extrinsic_depth.txt (4x4)  ground_truth.json
World frame: metres, z up, floor at z = 0. Camera frame: optical (x right, y down, z forward).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lisa_ros.geometry import CameraIntrinsics

# Calibrations like ScanNet's (colour 1296x968 and depth 640x480, calibrated separately, so the principal points
# do not match exactly); generated scenes use them scaled down.
SCANNET_COLOR = CameraIntrinsics(1169.6, 1167.1, 646.3, 489.9, 1296, 968)
SCANNET_DEPTH = CameraIntrinsics(577.6, 578.7, 318.9, 242.7, 640, 480)
_MAX_RANGE = 60.0  # m; rays hitting nothing (cannot happen inside the closed room) get no depth


@dataclass(frozen=True)
class Box:
    """An axis-aligned box object (world frame, metres; colour RGB 0-255)."""

    name: str
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    color: tuple[int, int, int]

    @property
    def min(self) -> np.ndarray:
        return np.asarray(self.center) - np.asarray(self.size) / 2

    @property
    def max(self) -> np.ndarray:
        return np.asarray(self.center) + np.asarray(self.size) / 2


# Room: x in [-2.5, 2.5], y in [-1.5, 4.0] (back wall at y = 4), floor z = 0, ceiling z = 2.6; open behind camera
# is closed too (y = -1.5), so every ray hits something.
ROOM_MIN = np.array([-2.5, -1.5, 0.0])
ROOM_MAX = np.array([2.5, 4.0, 2.6])
DEFAULT_BOXES = (
    Box("red cabinet", (-0.9, 2.6, 0.45), (0.6, 0.5, 0.9), (200, 40, 40)),
    Box("green box", (0.55, 1.9, 0.2), (0.4, 0.4, 0.4), (40, 170, 60)),
    Box("blue table", (0.2, 3.3, 0.375), (1.2, 0.6, 0.75), (50, 70, 200)),
)
_ROOM_COLORS = {"floor": (150, 120, 90), "ceiling": (235, 235, 230), "wall": (210, 205, 190)}


def look_at(position, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """4x4 camera-to-world pose of an optical-frame camera at `position` looking at `target` (world, m)."""
    forward = np.asarray(target, float) - np.asarray(position, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = position
    return pose


def default_trajectory(num_frames: int) -> list[np.ndarray]:
    """Camera poses sliding sideways at 1.4 m height, all looking at the middle of the objects."""
    xs = np.linspace(-0.6, 0.6, num_frames) if num_frames > 1 else [0.0]
    return [look_at((x, -0.4, 1.4), (0.0, 2.6, 0.4)) for x in xs]


def slab_hits(origin: np.ndarray, dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Ray/axis-aligned-box intersection for N rays: (entry distance, exit distance, entry axis), each (N,).
    Distances are in units of the ray direction's length."""
    safe = np.where(np.abs(dirs) < 1e-12, 1e-12, dirs)
    t1, t2 = (lo - origin) / safe, (hi - origin) / safe
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    return near.max(axis=1), far.min(axis=1), near.argmax(axis=1)


def render(intrinsics: CameraIntrinsics, camera_to_world: np.ndarray, boxes=DEFAULT_BOXES):
    """Ray-cast one view. Returns (rgb HxWx3 uint8, depth HxW float64 z-depth in m, ids HxW uint8: 0 = room, i + 1 =
    boxes[i], points HxWx3 float64 world-frame hit points)."""
    h, w = intrinsics.height, intrinsics.width
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    # Camera-frame direction with z = 1, so the ray parameter at a hit IS the z-depth.
    cam_dirs = np.stack([(u - intrinsics.cx) / intrinsics.fx, (v - intrinsics.cy) / intrinsics.fy,
                         np.ones_like(u)], axis=-1).reshape(-1, 3)
    rotation, origin = camera_to_world[:3, :3], camera_to_world[:3, 3]
    dirs = cam_dirs @ rotation.T
    # Inside the room the exit distance of the room "box" is the wall/floor/ceiling hit.
    _, depth, _ = slab_hits(origin, dirs, ROOM_MIN, ROOM_MAX)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.inf)
    ids = np.zeros(len(dirs), np.uint8)
    normal_axis = np.zeros(len(dirs), np.int64)
    for i, box in enumerate(boxes):
        near, far, axis = slab_hits(origin, dirs, box.min, box.max)
        hit = (near <= far) & (near > 0) & (near < depth)
        depth[hit], ids[hit], normal_axis[hit] = near[hit], i + 1, axis[hit]
    points = origin + dirs * depth[:, None]
    rgb = _shade(points, ids, normal_axis, boxes)
    depth[~np.isfinite(depth) | (depth > _MAX_RANGE)] = 0.0
    return rgb.reshape(h, w, 3), depth.reshape(h, w), ids.reshape(h, w), points.reshape(h, w, 3)


def _shade(points: np.ndarray, ids: np.ndarray, normal_axis: np.ndarray, boxes) -> np.ndarray:
    """Flat colours with per-face shading for boxes and a checkered floor (only so the images look like a room)."""
    rgb = np.empty((len(points), 3), np.float64)
    room = ids == 0
    on_floor = room & (points[:, 2] < 1e-6)
    on_ceiling = room & (points[:, 2] > ROOM_MAX[2] - 1e-6)
    rgb[room] = _ROOM_COLORS["wall"]
    rgb[on_ceiling] = _ROOM_COLORS["ceiling"]
    checker = (np.floor(points[:, 0] / 0.5) + np.floor(points[:, 1] / 0.5)) % 2
    rgb[on_floor] = np.asarray(_ROOM_COLORS["floor"]) * (0.85 + 0.15 * checker[on_floor, None])
    face_shade = np.array([0.75, 0.9, 1.0])  # x-facing, y-facing, z-facing (top) faces
    for i, box in enumerate(boxes):
        sel = ids == i + 1
        rgb[sel] = np.asarray(box.color) * face_shade[normal_axis[sel], None]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def write_matrix(path: Path, matrix: np.ndarray) -> None:
    path.write_text("\n".join(" ".join(f"{x:.6f}" for x in row) for row in matrix) + "\n")


def as_4x4(k: CameraIntrinsics) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = k.matrix
    return m


def visible_truth(ids: np.ndarray, points_world: np.ndarray, world_to_camera: np.ndarray, count: int) -> list[dict]:
    """Per visible object of instance ids 1..count: its id, pixel count, 2D box and the mean of its visible surface
    points (world and camera frame) - what a depth back-projection of a perfect mask should find."""
    out = []
    for i in range(1, count + 1):
        sel = ids == i
        if not sel.any():
            continue
        rows, cols = np.nonzero(sel)
        world = points_world[sel].mean(axis=0)
        camera = world_to_camera[:3, :3] @ world + world_to_camera[:3, 3]
        out.append({"id": i, "pixel_count": int(sel.sum()),
                    "bbox_2d": [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())],
                    "visible_centroid_world": world.round(6).tolist(),
                    "visible_centroid_camera": camera.round(6).tolist()})
    return out


def _frame_truth(index: int, ids: np.ndarray, points_world: np.ndarray, world_to_camera: np.ndarray, boxes):
    objects = visible_truth(ids, points_world, world_to_camera, len(boxes))
    return {"index": index, "color": f"color/{index}.jpg", "depth": f"depth/{index}.png",
            "instance": f"instance/{index}.png", "pose": f"pose/{index}.txt", "objects": objects}


def generate_scene(out_dir, num_frames: int = 4, color_size: tuple[int, int] = (324, 242),
                   depth_size: tuple[int, int] = (160, 120), boxes=DEFAULT_BOXES, jpeg_quality: int = 95) -> Path:
    """Write a synthetic scene to out_dir (created) and return it. color_size / depth_size: (width, height) px.

    Ground truth (ground_truth.json): per object its world box (min, max, center, size, m); per frame and visible
    object its pixel count and 2D box on the colour grid and the mean of its visible surface points (the
    centroid a depth back-projection should find), in world and camera coordinates (m), computed from the exact
    colour-resolution ray hits - not from the quantised depth images.
    """
    out = Path(out_dir)
    for sub in ("color", "depth", "pose", "instance", "intrinsic"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    color_k = SCANNET_COLOR.scaled_to(*color_size)
    depth_k = SCANNET_DEPTH.scaled_to(*depth_size)
    write_matrix(out / "intrinsic" / "intrinsic_color.txt", as_4x4(color_k))
    write_matrix(out / "intrinsic" / "intrinsic_depth.txt", as_4x4(depth_k))
    write_matrix(out / "intrinsic" / "extrinsic_color.txt", np.eye(4))
    write_matrix(out / "intrinsic" / "extrinsic_depth.txt", np.eye(4))
    frames = []
    for index, pose in enumerate(default_trajectory(num_frames)):
        rgb, _, ids, points = render(color_k, pose, boxes)
        _, depth, _, _ = render(depth_k, pose, boxes)
        cv2.imwrite(str(out / "color" / f"{index}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        cv2.imwrite(str(out / "depth" / f"{index}.png"), np.round(depth * 1000.0).astype(np.uint16))
        cv2.imwrite(str(out / "instance" / f"{index}.png"), ids)
        write_matrix(out / "pose" / f"{index}.txt", pose)
        frames.append(_frame_truth(index, ids, points, np.linalg.inv(pose), boxes))
    truth = {
        "units": "metres; world frame z up, floor z = 0; camera frames optical (x right, y down, z forward)",
        "color_size": list(color_size), "depth_size": list(depth_size),
        "objects": [{"id": i + 1, "name": b.name, "center": list(b.center), "size": list(b.size),
                     "min": b.min.tolist(), "max": b.max.tolist(), "color": list(b.color)}
                    for i, b in enumerate(boxes)],
        "frames": frames,
    }
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--color-size", type=int, nargs=2, default=(324, 242), metavar=("W", "H"))
    parser.add_argument("--depth-size", type=int, nargs=2, default=(160, 120), metavar=("W", "H"))
    args = parser.parse_args(argv)
    out = generate_scene(args.out_dir, args.frames, tuple(args.color_size), tuple(args.depth_size))
    print(f"wrote {args.frames} frames to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
