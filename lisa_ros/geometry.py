"""Camera geometry for 3D targets: intrinsics, grids of different resolution, back-projection, per-mask 3D boxes.

Pure NumPy (no ROS), so it is testable and reusable offline. Conventions:

* Camera optical frame (REP-103): +x right in the image, +y down, +z forward; metres.
* Pixel coordinates: integer (u, v) = the CENTRE of pixel column u, row v, as in ROS CameraInfo and OpenCV; the
  image spans [-0.5, W - 0.5]. Resizing by s therefore maps a continuous coordinate x to (x + 0.5) * s - 0.5, so
  cx' = (cx + 0.5) * s - 0.5 and fx' = fx * s. (cx' = cx * s would be right only for a corner-at-integer
  convention; at ScanNet's 1296 -> 640 it moves the principal point by about 0.25 px.)
* Depth images are z-depth (distance along the optical axis, not along the ray), float metres, NaN = no reading.
* ScanNet ships two calibrations: intrinsic_color.txt for the 1296x968 colour images and intrinsic_depth.txt for
  the 640x480 depth images, with depth registered to the colour viewpoint (extrinsics identity). Use each file for
  its own image; scaled_to() is for an image that was resized, not for converting one calibration into the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .support_plane import fit_support_plane, off_plane


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics (pixels) of an image of width x height pixels. Distortion is not modelled: use rectified
    images, or accept the error of the raw ones."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_matrix(cls, k, width: int, height: int) -> "CameraIntrinsics":
        """From a 3x3 camera matrix or a 4x4 one (ScanNet's intrinsic_*.txt; only the upper-left 3x3 is used)."""
        k = np.asarray(k, dtype=np.float64)
        if k.shape not in ((3, 3), (4, 4), (3, 4)):
            raise ValueError(f"camera matrix must be 3x3, 3x4 or 4x4, got {k.shape}")
        if k[0, 0] <= 0 or k[1, 1] <= 0:
            raise ValueError(f"camera matrix has no focal length: fx={k[0, 0]}, fy={k[1, 1]}")
        return cls(float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]), int(width), int(height))

    @classmethod
    def from_camera_info_fields(cls, k: Sequence[float], p: Sequence[float], width: int,
                                height: int) -> "CameraIntrinsics":
        """From sensor_msgs/CameraInfo's row-major `k` (9) and `p` (12). K describes the raw image; P is used only
        when K is all zero (some drivers fill P alone). For image_rect topics P's left 3x3 is the exact model and
        differs little from K."""
        k = np.asarray(k, dtype=np.float64).reshape(3, 3)
        if not k.any():
            k = np.asarray(p, dtype=np.float64).reshape(3, 4)
        if width <= 0 or height <= 0:
            raise ValueError(f"camera info has no image size ({width}x{height})")
        return cls.from_matrix(k, width, height)

    @property
    def matrix(self) -> np.ndarray:
        """3x3 float64 camera matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled_to(self, width: int, height: int) -> "CameraIntrinsics":
        """The intrinsics of this image resized to width x height (pixel-centre convention, see module doc)."""
        sx, sy = width / self.width, height / self.height
        return CameraIntrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
                                int(width), int(height))

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous pixel coordinates (u, v), each (N,), of Nx3 camera-frame points with z > 0."""
        z = points[:, 2]
        return self.fx * points[:, 0] / z + self.cx, self.fy * points[:, 1] / z + self.cy


def _nearest_index(coords: np.ndarray, size: int) -> np.ndarray:
    """Nearest pixel index for continuous coordinates (pixel i covers [i - 0.5, i + 0.5)); -1 when outside."""
    index = np.floor(coords + 0.5).astype(np.int64)
    index[(index < 0) | (index >= size)] = -1
    return index


def resample_nearest(image: np.ndarray, src: CameraIntrinsics, dst: CameraIntrinsics, fill=0) -> np.ndarray:
    """`image` (HxW[xC], on the grid of `src`) looked up at every pixel of the grid of `dst`, for two cameras with
    the same optical centre and orientation (registered depth, or one camera at two resolutions). Nearest
    neighbour: depth and mask values must not be blended across object edges. Pixels of `dst` whose ray leaves
    the `src` image get `fill`. Returns dst.height x dst.width[xC], dtype of `image`.
    """
    if image.shape[:2] != (src.height, src.width):
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]}, intrinsics are for {src.width}x{src.height}")
    # The ray through dst pixel u has x/z = (u - dst.cx) / dst.fx; it meets src at src.fx * x/z + src.cx.
    cols = _nearest_index(src.fx * (np.arange(dst.width) - dst.cx) / dst.fx + src.cx, src.width)
    rows = _nearest_index(src.fy * (np.arange(dst.height) - dst.cy) / dst.fy + src.cy, src.height)
    out = image[np.ix_(np.maximum(rows, 0), np.maximum(cols, 0))]
    out[rows < 0] = fill
    out[:, cols < 0] = fill
    return out


def resize_nearest(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize with pixel centres aligned (unlike cv2.INTER_NEAREST, which uses floor(x * s))."""
    src = CameraIntrinsics(1.0, 1.0, 0.0, 0.0, image.shape[1], image.shape[0])
    return resample_nearest(image, src, src.scaled_to(width, height))


def mask_to_depth_grid(mask: np.ndarray, color: CameraIntrinsics, depth: CameraIntrinsics) -> np.ndarray:
    """An HxW colour-grid mask on the depth image's grid (bool, depth.height x depth.width), registered cameras."""
    return resample_nearest(np.asarray(mask) != 0, color, depth, fill=False)


def depth_to_color_grid(depth_m: np.ndarray, depth: CameraIntrinsics, color: CameraIntrinsics) -> np.ndarray:
    """A depth image (float32 m) on the colour image's grid (color.height x color.width), registered cameras; NaN
    where the colour pixel's ray leaves the depth image."""
    return resample_nearest(depth_m.astype(np.float32, copy=False), depth, color, fill=np.nan)


def valid_depth(depth_m: np.ndarray, depth_min: float = 0.0, depth_max: float = np.inf) -> np.ndarray:
    """HxW bool: finite depth within [depth_min, depth_max] metres (NaN compares false, so it is invalid)."""
    with np.errstate(invalid="ignore"):
        return (depth_m >= max(depth_min, 1e-9)) & (depth_m <= depth_max)


def backproject(depth_m: np.ndarray, intrinsics: CameraIntrinsics, mask: np.ndarray | None = None,
                depth_min: float = 0.0, depth_max: float = np.inf) -> np.ndarray:
    """Nx3 float32 camera-frame points (m) of the pixels with valid depth (inside `mask`, HxW bool, if given)."""
    keep = valid_depth(depth_m, depth_min, depth_max)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    v, u = np.nonzero(keep)
    z = depth_m[v, u].astype(np.float64)
    x = (u - intrinsics.cx) * z / intrinsics.fx
    y = (v - intrinsics.cy) * z / intrinsics.fy
    return np.stack([x, y, z], axis=1).astype(np.float32)


def transform_points(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Nx3 points mapped by a 4x4 rigid transform (float32 out)."""
    t = np.asarray(transform, dtype=np.float64)
    return (points.astype(np.float64) @ t[:3, :3].T + t[:3, 3]).astype(np.float32)


class DepthProjector:
    """Back-projects one depth image once and answers "which 3D points fall in this colour mask" for many masks.

    The depth pixels are back-projected with the depth intrinsics, moved into the colour camera frame by
    `color_from_depth` (4x4, None = registered depth, same optical centre) and projected into the colour image;
    a point belongs to a mask when its nearest colour pixel is set. With a real extrinsic (unregistered depth) the
    depth camera sees past object edges onto surfaces the colour camera cannot see; such points land inside the
    occluding object's mask, so points more than `occlusion_margin` (m) behind the nearest point projected near
    the same colour pixel are dropped. Registered depth (None: RealSense aligned_depth_to_color, ScanNet) has no
    parallax and skips that test.
    """

    def __init__(self, depth_m: np.ndarray, depth: CameraIntrinsics, color: CameraIntrinsics,
                 color_from_depth: np.ndarray | None = None, depth_min: float = 0.0, depth_max: float = np.inf,
                 occlusion_margin: float = 0.05):
        if depth_m.shape != (depth.height, depth.width):
            raise ValueError(f"depth image is {depth_m.shape[1]}x{depth_m.shape[0]}, its intrinsics are for "
                             f"{depth.width}x{depth.height}")
        self.depth, self.color = depth, color
        points = backproject(depth_m, depth, depth_min=depth_min, depth_max=depth_max)
        self.points = points if color_from_depth is None else transform_points(color_from_depth, points)
        u, v = color.project(self.points.astype(np.float64))
        self._cols, self._rows = _nearest_index(u, color.width), _nearest_index(v, color.height)
        self._inside = (self._cols >= 0) & (self._rows >= 0) & (self.points[:, 2] > 0)
        if color_from_depth is not None:
            self._inside &= self._unoccluded(occlusion_margin)

    def _unoccluded(self, margin: float) -> np.ndarray:
        """(N,) bool: no other point projects within a depth pixel's footprint of this one and lies > margin nearer."""
        radius = max(1, int(round(0.5 * self.color.fx / self.depth.fx)))  # footprint half-width, colour pixels
        rows, cols, z = self._rows[self._inside], self._cols[self._inside], self.points[self._inside, 2]
        nearest = np.full((self.color.height, self.color.width), np.inf, np.float32)
        offsets = range(-radius, radius + 1)
        for dr in offsets:  # splat every point's z over its footprint (a z-buffer)
            for dc in offsets:
                np.minimum.at(nearest, (np.clip(rows + dr, 0, self.color.height - 1),
                                        np.clip(cols + dc, 0, self.color.width - 1)), z)
        visible = np.zeros(len(self.points), bool)
        visible[self._inside] = z <= nearest[rows, cols] + margin
        return visible

    def points_in(self, mask: np.ndarray) -> tuple[np.ndarray, float]:
        """(Nx3 float32 colour-frame points of `mask`, depth coverage in [0, 1]).

        mask: colour-grid HxW (bool or nonzero = target). Coverage = points / mask pixels on the depth grid, i.e.
        the fraction of the mask the depth camera measured.
        """
        mask = np.asarray(mask) != 0
        if mask.shape != (self.color.height, self.color.width):
            raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]}, the colour image is "
                             f"{self.color.width}x{self.color.height}")
        hit = self._inside.copy()
        hit[hit] = mask[self._rows[hit], self._cols[hit]]
        area = int(mask_to_depth_grid(mask, self.color, self.depth).sum())
        count = int(hit.sum())
        return self.points[hit], (min(1.0, count / area) if area else 0.0)


@dataclass(frozen=True)
class Target3DResult:
    """3D summary of one mask (metres, colour camera optical frame); the fields of lisa_ros/msg/Target3D."""

    valid: bool
    centroid: np.ndarray  # (3,) mean of the kept points
    bbox_min: np.ndarray  # (3,) axis-aligned box corners of the kept points
    bbox_max: np.ndarray  # (3,)
    point_count: int  # points kept
    depth_coverage: float  # fraction of the mask with valid depth, [0, 1]

    @property
    def bbox_center(self) -> np.ndarray:
        return (self.bbox_min + self.bbox_max) / 2

    @property
    def bbox_size(self) -> np.ndarray:
        return self.bbox_max - self.bbox_min

    @classmethod
    def invalid(cls, depth_coverage: float = 0.0, point_count: int = 0) -> "Target3DResult":
        zero = np.zeros(3)
        return cls(False, zero, zero, zero, point_count, depth_coverage)


def trim_outliers(points: np.ndarray, percentile: float) -> np.ndarray:
    """The points inside the per-axis [percentile, 100 - percentile] range on all three axes (for boxes only).

    Why: a few stray points stretch an axis-aligned box by their whole distance; clipping each axis's tails keeps
    the box on the object's body. It also shaves the genuine extremes, so a box is slightly small and a mean of
    the trimmed points is biased (1-2 cm measured on the synthetic scenes): centroids use the depth cluster
    instead. percentile = 0 keeps everything.
    """
    if percentile <= 0 or len(points) == 0:
        return points
    lo, hi = np.percentile(points, [percentile, 100.0 - percentile], axis=0)
    return points[np.all((points >= lo) & (points <= hi), axis=1)]


def largest_depth_cluster(points: np.ndarray, gap: float = 0.10, relative_gap: float = 0.05) -> np.ndarray:
    """The points of the largest run of depths (z) with no gap wider than max(gap, relative_gap * z) metres.

    Why: a mask's border pixels land on whatever is behind (or in front of) the object - segmentation and depth
    edges never align exactly, and nearest-pixel mapping between grids of different resolution adds a pixel of
    slack. Those points sit across a depth jump from the object. A connected object's own depths have no such
    gap, however oblique the surface, so a clean point set is kept whole and its mean is unbiased (unlike a
    percentile or median-deviation cut). Nx3 in, Mx3 out (M <= N).
    """
    if len(points) < 2:
        return points
    z = np.sort(points[:, 2])
    breaks = np.nonzero(np.diff(z) > np.maximum(gap, relative_gap * z[:-1]))[0]
    if len(breaks) == 0:
        return points
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(z) - 1]])
    largest = int(np.argmax(ends - starts))
    return points[(points[:, 2] >= z[starts[largest]]) & (points[:, 2] <= z[ends[largest]])]


def target_from_points(points: np.ndarray, trim_percentile: float = 2.0, min_points: int = 10,
                       depth_coverage: float = 1.0, depth_gap: float = 0.10) -> Target3DResult:
    """Centroid = mean of the largest depth cluster (largest_depth_cluster); box = that cluster's per-axis
    [trim_percentile, 100 - trim_percentile] range (trim_outliers). Invalid when fewer than min_points remain."""
    kept = largest_depth_cluster(np.asarray(points, dtype=np.float32), depth_gap)
    return _summarise(kept, trim_percentile, min_points, depth_coverage)


def _summarise(kept: np.ndarray, trim_percentile: float, min_points: int, depth_coverage: float) -> Target3DResult:
    boxed = trim_outliers(kept, trim_percentile)
    if len(kept) < max(1, min_points) or len(boxed) == 0:
        return Target3DResult.invalid(depth_coverage, len(kept))
    boxed64 = boxed.astype(np.float64)
    return Target3DResult(True, kept.astype(np.float64).mean(axis=0), boxed64.min(axis=0), boxed64.max(axis=0),
                          len(kept), float(depth_coverage))


def targets_3d(masks: Sequence[np.ndarray], depth_m: np.ndarray, depth: CameraIntrinsics, color: CameraIntrinsics,
               color_from_depth: np.ndarray | None = None, trim_percentile: float = 2.0, min_points: int = 10,
               depth_min: float = 0.0, depth_max: float = np.inf, depth_gap: float = 0.10,
               support_margin: float = 0.0) -> list[tuple[Target3DResult, np.ndarray]]:
    """For each colour-grid mask (HxW, nonzero = target): (its Target3DResult, the Mx3 float32 points it is made
    of, in the colour camera frame, before the box's percentile trim - e.g. for a PointCloud2, whose mean is the
    centroid). The depth image is back-projected once.

    support_margin > 0: the frame's support plane (support_plane.fit_support_plane) is fitted once, and a mask's
    points within that margin (m) of it are left out unless they are 70 % or more of them - a mask that fills the
    gaps between legs puts floor points in at the object's own depth. Then the largest depth cluster is kept.
    """
    projector = DepthProjector(depth_m, depth, color, color_from_depth, depth_min, depth_max)
    plane = fit_support_plane(projector.points, support_margin) if support_margin > 0 and len(masks) else None
    results = []
    for mask in masks:
        points, coverage = projector.points_in(mask)
        kept = largest_depth_cluster(off_plane(points, plane, support_margin), depth_gap)
        results.append((_summarise(kept, trim_percentile, min_points, coverage), kept))
    return results


def quaternion_from_matrix(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) unit quaternion of a 3x3 rotation matrix (Shepperd's method: stable for every angle)."""
    r = np.asarray(rotation, dtype=np.float64)[:3, :3]
    trace = np.trace(r)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = ((r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s)
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + r[i, i] - r[j, j] - r[k, k])
        q = [0.0, 0.0, 0.0, (r[k, j] - r[j, k]) / s]
        q[i] = 0.25 * s
        q[j] = (r[j, i] + r[i, j]) / s
        q[k] = (r[k, i] + r[i, k]) / s
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return tuple(float(c) for c in q)
