"""Household scenes a robot meets, with known geometry: ray-cast rooms of furniture and objects.

    python -m lisa_ros.scenes.household OUT_DIR [--frames 4] [--seed 0] [--kinds laundry_basket,chair,...]

Each object kind is a few analytic parts (axis-aligned boxes, upright cylinders) in a colour of its own, so every
depth value is an exact ray intersection and every pixel knows its instance. A scene places a random subset of the
kinds on the floor of the room (the mug stands on the table), with random sizes, camera pose and lighting, and is
written in the ScanNet frame layout of `lisa_ros.scenes.synthetic` (colour/depth at ScanNet's calibrations scaled
down, poses, per-pixel instance masks, ground_truth.json with each visible object's true visible-surface centroid).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lisa_ros.geometry import CameraIntrinsics

from .synthetic import (ROOM_MAX, ROOM_MIN, SCANNET_COLOR, SCANNET_DEPTH, as_4x4, look_at, slab_hits, visible_truth,
                        write_matrix)

ROOM_COLOURS = {"floor": (150, 120, 90), "ceiling": (235, 235, 230), "wall": (210, 205, 190)}


@dataclass(frozen=True)
class Part:
    """A box (lo, hi corners) or an upright cylinder (centre x/y in lo[:2], radius in hi[0], z from lo[2] to
    hi[2]); world frame, metres; colour RGB 0-255."""

    shape: str  # "box" or "cylinder"
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    colour: tuple[int, int, int]


@dataclass
class HouseholdObject:
    kind: str
    parts: list[Part]
    footprint: tuple[float, float, float, float] = (0, 0, 0, 0)  # x0, y0, x1, y1 on the floor
    extra: dict = field(default_factory=dict)


# kind -> (colour name, base size in m: width, depth, height). Distinct colours: the tiny demo model tells kinds
# apart by them; shapes differ too.
KINDS: dict[str, tuple[str, tuple[float, float, float]]] = {
    "laundry_basket": ("blue", (0.50, 0.50, 0.50)),
    "chair": ("orange", (0.50, 0.50, 0.95)),
    "table": ("brown", (1.00, 0.60, 0.75)),
    "waste_bin": ("grey", (0.34, 0.34, 0.40)),
    "mug": ("red", (0.20, 0.20, 0.20)),
    "plant": ("green", (0.46, 0.46, 0.80)),
    "shelf": ("purple", (0.80, 0.32, 1.40)),
}
COLOURS = {"blue": (80, 150, 235), "orange": (240, 140, 30), "brown": (110, 68, 36), "grey": (60, 60, 66),
           "red": (215, 30, 35), "green": (50, 165, 60), "terracotta": (185, 95, 55), "purple": (128, 70, 155)}


def _box(x0, y0, z0, x1, y1, z1, colour) -> Part:
    return Part("box", (x0, y0, z0), (x1, y1, z1), colour)


def _cylinder(cx, cy, r, z0, z1, colour) -> Part:
    return Part("cylinder", (cx, cy, z0), (r, 0.0, z1), colour)


def build_object(kind: str, x: float, y: float, scale: float, z: float = 0.0, facing: int = 0) -> HouseholdObject:
    """`kind` standing at floor point (x, y) (or on a surface at height z), sizes times `scale`; `facing` (0-3)
    turns a chair's back by quarter turns."""
    colour = COLOURS[KINDS[kind][0]]
    w, d, h = (s * scale for s in KINDS[kind][1])
    parts: list[Part] = []
    if kind in ("laundry_basket", "waste_bin"):
        parts = [_cylinder(x, y, w / 2, z, z + h, colour)]
    elif kind == "mug":
        r = w / 2 * 0.75
        parts = [_cylinder(x, y, r, z, z + h, colour), _box(x + r, y - 0.015, z + 0.25 * h, x + w / 2 + 0.03,
                                                            y + 0.015, z + 0.8 * h, colour)]
    elif kind == "plant":
        pot = 0.32 * h
        parts = [_cylinder(x, y, w * 0.3, z, z + pot, COLOURS["terracotta"]),
                 _cylinder(x, y, w / 2, z + pot, z + h, colour)]
    elif kind in ("table", "chair"):
        top = 0.75 * h / 0.75 if kind == "table" else 0.47 * scale
        leg = 0.05 * scale
        x0, y0, x1, y1 = x - w / 2, y - d / 2, x + w / 2, y + d / 2
        parts = [_box(x0, y0, top - 0.05 * scale, x1, y1, top, colour)]
        parts += [_box(lx, ly, z, lx + leg, ly + leg, top - 0.05 * scale, colour)
                  for lx in (x0, x1 - leg) for ly in (y0, y1 - leg)]
        if kind == "chair":  # the back, on one side
            t = 0.05 * scale
            backs = [(x0, y1 - t, x1, y1), (x1 - t, y0, x1, y1), (x0, y0, x1, y0 + t), (x0, y0, x0 + t, y1)]
            bx0, by0, bx1, by1 = backs[facing % 4]
            parts.append(_box(bx0, by0, top, bx1, by1, z + h, colour))
    elif kind == "shelf":
        t = 0.03 * scale
        x0, y0, x1, y1 = x - w / 2, y - d / 2, x + w / 2, y + d / 2
        parts = [_box(x0, y1 - t, z, x1, y1, z + h, colour), _box(x0, y0, z, x0 + t, y1, z + h, colour),
                 _box(x1 - t, y0, z, x1, y1, z + h, colour)]
        parts += [_box(x0, y0, z + k * h / 4, x1, y1, z + k * h / 4 + t, colour) for k in range(5)]
    else:
        raise ValueError(f"unknown kind {kind!r}; known: {sorted(KINDS)}")
    return HouseholdObject(kind, parts, (x - w / 2, y - d / 2, x + w / 2, y + d / 2))


# ----- ray casting -------------------------------------------------------------------------------------------------

def _cylinder_hits(origin: np.ndarray, dirs: np.ndarray, part: Part) -> tuple[np.ndarray, np.ndarray]:
    """(distance, normal) of each ray's first hit on an upright cylinder (side or top/bottom cap); inf: none."""
    (cx, cy, z0), (r, _, z1) = part.lo, part.hi
    ox, oy = origin[0] - cx, origin[1] - cy
    a = dirs[:, 0] ** 2 + dirs[:, 1] ** 2
    b = 2 * (ox * dirs[:, 0] + oy * dirs[:, 1])
    c = ox * ox + oy * oy - r * r
    disc = b * b - 4 * a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-b - np.sqrt(disc)) / (2 * a)
    z_side = origin[2] + t_side * dirs[:, 2]
    side_ok = (disc >= 0) & (a > 1e-12) & (t_side > 0) & (z_side >= z0) & (z_side <= z1)
    best = np.where(side_ok, t_side, np.inf)
    normal = np.zeros_like(dirs)
    hit = origin + best[:, None] * dirs
    normal[side_ok, 0], normal[side_ok, 1] = (hit[side_ok, 0] - cx) / r, (hit[side_ok, 1] - cy) / r
    for zc, nz in ((z1, 1.0), (z0, -1.0)):
        with np.errstate(divide="ignore", invalid="ignore"):
            t_cap = (zc - origin[2]) / dirs[:, 2]
        px, py = origin[0] + t_cap * dirs[:, 0] - cx, origin[1] + t_cap * dirs[:, 1] - cy
        cap = (t_cap > 0) & (px * px + py * py <= r * r) & (t_cap < best)
        best = np.where(cap, t_cap, best)
        normal[cap] = (0.0, 0.0, nz)
    return best, normal


def _box_hits(origin: np.ndarray, dirs: np.ndarray, part: Part) -> tuple[np.ndarray, np.ndarray]:
    near, far, axis = slab_hits(origin, dirs, np.asarray(part.lo), np.asarray(part.hi))
    ok = (near <= far) & (near > 0)
    normal = np.zeros_like(dirs)
    rows = np.nonzero(ok)[0]
    normal[rows, axis[rows]] = -np.sign(dirs[rows, axis[rows]])
    return np.where(ok, near, np.inf), normal


def render(intrinsics: CameraIntrinsics, camera_to_world: np.ndarray, objects: list[HouseholdObject],
           light: tuple[float, float, float] = (0.3, -0.5, 1.0), brightness: float = 1.0):
    """Ray-cast one view: (rgb HxWx3 uint8, depth HxW z-depth m, ids HxW uint8 (0 room, i + 1 objects[i]),
    world points HxWx3)."""
    h, w = intrinsics.height, intrinsics.width
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    cam = np.stack([(u - intrinsics.cx) / intrinsics.fx, (v - intrinsics.cy) / intrinsics.fy, np.ones_like(u)],
                   axis=-1).reshape(-1, 3)
    rotation, origin = camera_to_world[:3, :3], camera_to_world[:3, 3]
    dirs = cam @ rotation.T  # z-depth is the ray parameter: camera z of the direction is 1
    _, depth, axis = slab_hits(origin, dirs, ROOM_MIN, ROOM_MAX)
    normal = np.zeros_like(dirs)
    normal[np.arange(len(dirs)), axis] = 1.0  # room surfaces: flat shading, colour by surface below
    colour = np.empty_like(dirs)
    ids = np.zeros(len(dirs), np.uint8)
    for i, obj in enumerate(objects):
        for part in obj.parts:
            t, n = (_cylinder_hits if part.shape == "cylinder" else _box_hits)(origin, dirs, part)
            hit = t < depth
            depth[hit], ids[hit], normal[hit], colour[hit] = t[hit], i + 1, n[hit], part.colour
    points = origin + dirs * depth[:, None]
    room = ids == 0
    colour[room] = ROOM_COLOURS["wall"]
    floor = room & (points[:, 2] < 1e-6)
    checker = (np.floor(points[:, 0] / 0.5) + np.floor(points[:, 1] / 0.5)) % 2
    colour[floor] = np.asarray(ROOM_COLOURS["floor"]) * (0.85 + 0.15 * checker[floor, None])
    colour[room & (points[:, 2] > ROOM_MAX[2] - 1e-6)] = ROOM_COLOURS["ceiling"]
    lit = np.asarray(light, float) / np.linalg.norm(light)
    shade = np.where(room, 1.0, 0.45 + 0.55 * np.abs(normal @ lit))
    rgb = np.clip(colour * (shade * brightness)[:, None], 0, 255).astype(np.uint8)
    return rgb.reshape(h, w, 3), depth.reshape(h, w), ids.reshape(h, w), points.reshape(h, w, 3)


# ----- layouts -----------------------------------------------------------------------------------------------------

@dataclass
class Layout:
    objects: list[HouseholdObject]
    poses: list[np.ndarray]  # camera-to-world, one per frame
    light: tuple[float, float, float]
    brightness: float


def _overlaps(a, b, gap: float = 0.08) -> bool:
    return not (a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1])


def _place(rng: np.random.Generator, kinds: list[str]) -> list[HouseholdObject] | None:
    """Non-overlapping footprints in a 2.8 x 1.8 m area in front of the back wall; None when one does not fit."""
    objects: list[HouseholdObject] = []
    for kind in rng.permutation(kinds):
        for _ in range(100):
            obj = build_object(str(kind), rng.uniform(-1.4, 1.4), rng.uniform(1.3, 3.1), rng.uniform(0.85, 1.15),
                               facing=int(rng.integers(4)))
            if all(not _overlaps(obj.footprint, o.footprint) for o in objects):
                objects.append(obj)
                break
        else:
            return None
    return objects


def sample_layout(rng: np.random.Generator, kinds: list[str], num_frames: int = 1) -> Layout:
    """Place `kinds` (a mug goes on the table, which is then placed too) in the middle of the room, facing a
    camera 2-3 m away at 1.1-1.6 m height; random sizes (x0.85-1.15), chair facing, light and brightness."""
    kinds = list(dict.fromkeys(kinds + (["table"] if "mug" in kinds and "table" not in kinds else [])))
    floor_kinds = [k for k in kinds if k != "mug"]
    for _ in range(50):  # a crowded draw is drawn again
        objects = _place(rng, floor_kinds)
        if objects is not None:
            break
    else:
        raise RuntimeError(f"no room for {floor_kinds} on the floor")
    if "mug" in kinds:
        table = next(o for o in objects if o.kind == "table")
        x0, y0, x1, y1 = table.footprint
        top = max(p.hi[2] for p in table.parts)
        objects.append(build_object("mug", rng.uniform(x0 + 0.15, x1 - 0.15), rng.uniform(y0 + 0.12, y1 - 0.12),
                                    rng.uniform(0.9, 1.1), z=top))
    centre = np.mean([[(o.footprint[0] + o.footprint[2]) / 2, (o.footprint[1] + o.footprint[3]) / 2]
                      for o in objects], axis=0)
    poses = []
    for k in range(num_frames):
        side = rng.uniform(-0.5, 0.5) if num_frames == 1 else np.linspace(-0.5, 0.5, num_frames)[k]
        eye = (centre[0] + side, centre[1] - rng.uniform(2.2, 2.9), rng.uniform(1.1, 1.6))
        poses.append(look_at(eye, (centre[0], centre[1], 0.35)))
    light = (float(rng.uniform(-0.6, 0.6)), float(rng.uniform(-0.8, -0.2)), 1.0)
    return Layout(objects, poses, light, float(rng.uniform(0.8, 1.15)))


# ----- writing a scene ---------------------------------------------------------------------------------------------

def frame_truth(ids: np.ndarray, points_world: np.ndarray, world_to_camera: np.ndarray,
                objects: list[HouseholdObject]) -> list[dict]:
    """Per visible object: the synthetic scene's truth (id, pixel count, 2D box, visible-surface centroid) and what
    the object is (kind, colour)."""
    out = visible_truth(ids, points_world, world_to_camera, len(objects))
    for entry in out:
        kind = objects[entry["id"] - 1].kind
        entry.update(kind=kind, colour=KINDS[kind][0])
    return out


def generate_scene(out_dir, kinds: list[str] | None = None, num_frames: int = 4, seed: int = 0,
                   color_size: tuple[int, int] = (640, 480), depth_size: tuple[int, int] = (320, 240),
                   jpeg_quality: int = 95) -> Path:
    """Write a household scene (ScanNet layout, as `lisa_ros.scenes.synthetic`) and return its folder. kinds:
    which objects (default: all seven). Ground truth from the exact colour-resolution ray hits."""
    rng = np.random.default_rng(seed)
    layout = sample_layout(rng, list(kinds or KINDS), num_frames)
    out = Path(out_dir)
    for sub in ("color", "depth", "pose", "instance", "intrinsic"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    color_k, depth_k = SCANNET_COLOR.scaled_to(*color_size), SCANNET_DEPTH.scaled_to(*depth_size)
    write_matrix(out / "intrinsic" / "intrinsic_color.txt", as_4x4(color_k))
    write_matrix(out / "intrinsic" / "intrinsic_depth.txt", as_4x4(depth_k))
    write_matrix(out / "intrinsic" / "extrinsic_color.txt", np.eye(4))
    write_matrix(out / "intrinsic" / "extrinsic_depth.txt", np.eye(4))
    frames = []
    for index, pose in enumerate(layout.poses):
        rgb, _, ids, points = render(color_k, pose, layout.objects, layout.light, layout.brightness)
        _, depth, _, _ = render(depth_k, pose, layout.objects, layout.light, layout.brightness)
        cv2.imwrite(str(out / "color" / f"{index}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        cv2.imwrite(str(out / "depth" / f"{index}.png"), np.round(depth * 1000.0).astype(np.uint16))
        cv2.imwrite(str(out / "instance" / f"{index}.png"), ids)
        write_matrix(out / "pose" / f"{index}.txt", pose)
        frames.append({"index": index, "color": f"color/{index}.jpg", "depth": f"depth/{index}.png",
                       "instance": f"instance/{index}.png", "pose": f"pose/{index}.txt",
                       "objects": frame_truth(ids, points, np.linalg.inv(pose), layout.objects)})
    truth = {"units": "metres; world frame z up, floor z = 0; camera frames optical (x right, y down, z forward)",
             "color_size": list(color_size), "depth_size": list(depth_size), "seed": seed,
             "objects": [{"id": i + 1, "kind": o.kind, "colour": KINDS[o.kind][0],
                          "parts": [{"shape": p.shape, "lo": list(p.lo), "hi": list(p.hi)} for p in o.parts]}
                         for i, o in enumerate(layout.objects)],
             "frames": frames}
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--color-size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    parser.add_argument("--depth-size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    args = parser.parse_args(argv)
    out = generate_scene(args.out_dir, args.kinds.split(","), args.frames, args.seed, tuple(args.color_size),
                         tuple(args.depth_size))
    print(f"wrote {args.frames} frames to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
