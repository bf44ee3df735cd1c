"""The support-plane rule of 3D targets (lisa_ros.support_plane) on household scenes with exact geometry: the floor
is found where the camera pose says it is, a mask that fills the gaps between a chair's legs gets its centroid back,
and things that are on or are the plane keep all their points."""
import json

import cv2
import numpy as np
import pytest

from lisa_ros.geometry import DepthProjector, targets_3d
from lisa_ros.scenes.household import generate_scene
from lisa_ros.scenes.scannet import ScanNetScene
from lisa_ros.support_plane import Plane, fit_support_plane, off_plane


@pytest.fixture(scope="module", params=[3, 5])
def room(request, tmp_path_factory):
    """(scene, truth of frame 0, instance ids) of a household room at 320x240, colour and depth."""
    folder = generate_scene(tmp_path_factory.mktemp("room") / "scene", num_frames=1, seed=request.param,
                            color_size=(320, 240), depth_size=(320, 240))
    frame = json.loads((folder / "ground_truth.json").read_text())["frames"][0]
    return ScanNetScene.open(folder), frame, cv2.imread(str(folder / frame["instance"]), cv2.IMREAD_UNCHANGED)


def _centroid_error(scene, mask, truth, margin: float) -> float:
    (target, _), = targets_3d([mask], scene.read_depth(0), scene.depth_intrinsics, scene.color_intrinsics,
                              support_margin=margin)
    assert target.valid
    return float(np.linalg.norm(target.centroid - truth["visible_centroid_camera"]))


def test_the_floor_is_found_where_the_pose_puts_it(room):
    scene, _, _ = room
    projector = DepthProjector(scene.read_depth(0), scene.depth_intrinsics, scene.color_intrinsics)
    plane = fit_support_plane(projector.points)
    pose = scene.pose(0)  # camera to world; the world floor is z = 0
    up = pose[:3, :3].T @ np.array([0.0, 0.0, 1.0])
    assert np.degrees(np.arccos(min(1.0, plane.normal @ up))) < 0.5
    assert plane.offset == pytest.approx(pose[2, 3], abs=0.005)  # the camera's height above the floor
    again = fit_support_plane(projector.points)  # a fixed seed: the same frame gives the same plane
    assert np.array_equal(plane.normal, again.normal) and plane.offset == again.offset


def test_a_mask_over_the_gaps_between_the_legs_gets_its_centroid_back(room):
    """The chair's convex hull, as a coarse decoder paints it: the floor between the legs sits at the chair's own
    depth, so the depth-gap rule keeps it and the centroid drops 20 cm; left out, the centroid is back within
    5 cm."""
    scene, frame, ids = room
    chair = next(o for o in frame["objects"] if o["kind"] == "chair")
    mask = (ids == chair["id"]).astype(np.uint8)
    cv2.fillPoly(mask, [cv2.convexHull(cv2.findNonZero(mask))], 1)
    without, with_rule = (_centroid_error(scene, mask, chair, m) for m in (0.0, 0.01))
    assert without > 0.15 and with_rule < 0.05, (without, with_rule)


def test_true_masks_stay_within_a_centimetre(room):
    """The rule also drops an object's own points within 1 cm of the floor (a basket's bottom rim, a shelf's
    bottom board): the cost on exact masks, measured here, is under 1 cm; without it they are within 1 mm."""
    scene, frame, ids = room
    for obj in frame["objects"]:
        assert _centroid_error(scene, ids == obj["id"], obj, 0.0) < 0.001, obj["kind"]
        assert _centroid_error(scene, ids == obj["id"], obj, 0.01) < 0.01, obj["kind"]


def test_the_floor_itself_keeps_all_its_points(room):
    scene, _, ids = room
    floor = ids == 0
    floor[: ids.shape[0] // 2] = False  # the lower half of the background: floor, no wall
    (target, kept), = targets_3d([floor], scene.read_depth(0), scene.depth_intrinsics, scene.color_intrinsics,
                                 support_margin=0.01)
    points, _ = DepthProjector(scene.read_depth(0), scene.depth_intrinsics, scene.color_intrinsics).points_in(floor)
    assert target.valid and target.point_count == len(kept) == len(points)


def test_walls_are_not_support_and_the_guard_keeps_flat_targets():
    rng = np.random.default_rng(0)
    wall = np.c_[rng.uniform(-1, 1, 5000), rng.uniform(-1, 1, 5000), np.full(5000, 3.0)]  # facing the camera
    side_wall = np.c_[np.full(5000, 1.0), rng.uniform(-1, 1, 5000), rng.uniform(1, 4, 5000)]
    assert fit_support_plane(np.vstack([wall, side_wall])) is None
    floor = np.c_[rng.uniform(-1, 1, 5000), np.full(5000, 1.2), rng.uniform(1, 4, 5000)]  # 1.2 m below the camera
    plane = fit_support_plane(np.vstack([wall, floor]))
    assert plane.normal @ [0, -1, 0] > 0.999 and plane.offset == pytest.approx(1.2)
    box = np.c_[rng.uniform(0, 0.3, 600), rng.uniform(0.9, 1.2, 600), rng.uniform(2, 2.3, 600)]
    on_floor = floor[:400]
    assert len(off_plane(np.vstack([box, on_floor]), plane)) == len(box) - (box[:, 1] > 1.19).sum()
    rug = np.vstack([on_floor, box[:100]])  # mostly on the plane: it is the target, keep it whole
    assert len(off_plane(rug, plane)) == len(rug)
    assert len(off_plane(rug, None)) == len(rug) and len(off_plane(rug, plane, margin=0.0)) == len(rug)


def test_a_tilted_camera_still_finds_the_floor():
    """A camera pitched 45 degrees down sees the floor with a normal 45 degrees from its up; 70 is past the limit."""
    rng = np.random.default_rng(1)
    flat = np.c_[rng.uniform(-2, 2, 8000), np.zeros(8000), rng.uniform(-2, 2, 8000)]
    for pitch, found in ((45, True), (70, False)):
        a = np.radians(pitch)
        rotation = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        points = flat @ rotation.T + [0, 0, 4]
        plane = fit_support_plane(points)
        assert (plane is not None) == found, pitch
        if found:
            assert np.degrees(np.arccos(abs(plane.normal @ [0, -np.cos(a), -np.sin(a)]))) < 0.5
            assert isinstance(plane, Plane) and np.all(plane.distance(points) < 1e-6)
