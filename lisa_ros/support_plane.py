"""The support plane of a frame (the floor, or a table top) and a target's points that lie on it.

A mask from a low-resolution decoder (LISA's SAM decodes 256 x 256 logits for the whole frame) fills the gaps
between a chair's or a table's legs, and those pixels' depth lands on the floor behind. They sit at the object's
own depth, so a depth-gap rule cannot tell them apart; what gives them away is that they lie on the floor plane.
Pure NumPy, camera optical frame (REP-103: +y points down), metres.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CAMERA_UP = np.array([0.0, -1.0, 0.0])


@dataclass(frozen=True)
class Plane:
    """The plane n . p + d = 0, n a unit normal pointing towards the camera's up (-y)."""

    normal: np.ndarray  # (3,)
    offset: float

    def distance(self, points: np.ndarray) -> np.ndarray:
        """(N,) unsigned distance (m) of Nx3 points from the plane."""
        return np.abs(np.asarray(points, np.float64) @ self.normal + self.offset)


def _plane_through(points: np.ndarray) -> Plane | None:
    """Least-squares plane of Nx3 points (N >= 3); None when they are (nearly) collinear."""
    centre = points.mean(axis=0)
    _, singular, vt = np.linalg.svd(points - centre, full_matrices=False)
    if singular[1] < 1e-9:
        return None
    normal = vt[2] if vt[2] @ CAMERA_UP >= 0 else -vt[2]
    return Plane(normal, float(-normal @ centre))


def fit_support_plane(points: np.ndarray, margin: float = 0.01, max_tilt_deg: float = 60.0,
                      min_share: float = 0.1, iterations: int = 200, sample: int = 8000,
                      seed: int = 0) -> Plane | None:
    """The plane holding the most of a frame's Nx3 points within `margin` (m), among planes whose normal is within
    `max_tilt_deg` of the camera's up (floors and table tops for a camera pitched up to that much; walls are
    excluded). RANSAC over at most `sample` points with a fixed seed, so a frame always gives the same plane, then
    a least-squares refit on the inliers. None when no such plane holds `min_share` of the points.
    """
    points = np.asarray(points, np.float64)
    points = points[np.isfinite(points).all(axis=1) & (points[:, 2] > 0)]
    if len(points) < 3:
        return None
    rng = np.random.default_rng(seed)
    if len(points) > sample:
        points = points[rng.choice(len(points), sample, replace=False)]
    min_cos = np.cos(np.radians(max_tilt_deg))
    best, best_count = None, 0
    for _ in range(iterations):
        a, b, c = points[rng.choice(len(points), 3, replace=False)]
        normal = np.cross(b - a, c - a)
        length = np.linalg.norm(normal)
        if length < 1e-12 or abs(normal @ CAMERA_UP) / length < min_cos:
            continue
        normal /= length
        count = int((np.abs(points @ normal - normal @ a) < margin).sum())
        if count > best_count:
            best, best_count = (normal, float(-normal @ a)), count
    if best is None or best_count < min_share * len(points):
        return None
    refit = _plane_through(points[np.abs(points @ best[0] + best[1]) < margin])
    if refit is not None:
        return refit
    sign = 1.0 if best[0] @ CAMERA_UP >= 0 else -1.0
    return Plane(sign * best[0], sign * best[1])


def off_plane(points: np.ndarray, plane: Plane | None, margin: float = 0.01, max_share: float = 0.7) -> np.ndarray:
    """The Nx3 points farther than `margin` from the plane - unless those near it are `max_share` or more of them:
    then the target is on the plane or is the plane (a rug, the floor, a table top) and all points are kept."""
    if plane is None or margin <= 0 or len(points) == 0:
        return points
    near = plane.distance(points) < margin
    return points if near.mean() >= max_share else points[~near]
