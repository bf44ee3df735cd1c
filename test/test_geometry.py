"""3D geometry against the synthetic scene's exact ground truth: colour 324x242 and depth 160x120 with their own
calibrations (ScanNet's 1296x968 / 640x480, scaled down), boxes at known world positions."""
import json

import cv2
import numpy as np
import pytest
from ros_fixtures import synthetic_scene  # noqa: F401

from lisa_ros.geometry import (
    CameraIntrinsics, DepthProjector, backproject, depth_to_color_grid, mask_to_depth_grid, quaternion_from_matrix,
    resize_nearest, target_from_points, targets_3d, transform_points,
)
from lisa_ros.scenes.scannet import ScanNetScene
from lisa_ros.scenes.synthetic import DEFAULT_BOXES, render


def _truth(scene_dir):
    return json.loads((scene_dir / "ground_truth.json").read_text())


def _colour_ids(scene_dir, frame: dict) -> np.ndarray:
    return cv2.imread(str(scene_dir / frame["instance"]), cv2.IMREAD_UNCHANGED)


def _distance_to_box_surface(points_world: np.ndarray, box) -> np.ndarray:
    """Distance (m) of each point to the surface of an axis-aligned box (points assumed on or near it)."""
    lo, hi = box.min, box.max
    outside = np.linalg.norm(np.maximum(np.maximum(lo - points_world, points_world - hi), 0), axis=1)
    inside = np.minimum(points_world - lo, hi - points_world).min(axis=1)
    return np.where(outside > 0, outside, np.maximum(inside, 0))


def _objects(scene_dir):
    """(scene, [(frame id, object truth, colour-grid mask), ...]) over every visible object of every frame."""
    scene = ScanNetScene.open(scene_dir)
    items = []
    for frame in _truth(scene_dir)["frames"]:
        ids = _colour_ids(scene_dir, frame)
        items += [(frame["index"], obj, ids == obj["id"]) for obj in frame["objects"]]
    return scene, items


# ----- intrinsics ----------------------------------------------------------------------------------------------

def test_intrinsics_from_matrices_and_camera_info():
    k3 = [[500.0, 0, 319.5], [0, 505.0, 239.5], [0, 0, 1]]
    k4 = np.eye(4)
    k4[:3, :3] = k3
    a = CameraIntrinsics.from_matrix(k3, 640, 480)
    assert a == CameraIntrinsics.from_matrix(k4, 640, 480) == CameraIntrinsics(500, 505, 319.5, 239.5, 640, 480)
    np.testing.assert_array_equal(a.matrix, k3)
    assert CameraIntrinsics.from_camera_info_fields(np.ravel(k3), [0] * 12, 640, 480) == a
    p = np.hstack([np.asarray(k3), np.zeros((3, 1))]).ravel()
    assert CameraIntrinsics.from_camera_info_fields([0] * 9, p, 640, 480) == a  # K empty: P's left 3x3
    with pytest.raises(ValueError, match="no focal length"):
        CameraIntrinsics.from_matrix(np.zeros((3, 3)), 640, 480)
    with pytest.raises(ValueError, match="no image size"):
        CameraIntrinsics.from_camera_info_fields(np.ravel(k3), p, 0, 0)


def test_scaling_uses_the_pixel_centre_convention_of_opencv_resize():
    """A horizontal ramp whose value is the column index, resized by cv2 (bilinear, centre-aligned): the value at
    an output pixel is the input coordinate it came from, which scaled_to() must predict."""
    src = CameraIntrinsics(100.0, 100.0, 40.0, 30.0, 80, 60)
    ramp = np.tile(np.arange(80, dtype=np.float32), (60, 1))
    for width, height in [(40, 30), (200, 150), (52, 39)]:
        resized = cv2.resize(ramp, (width, height), interpolation=cv2.INTER_LINEAR)
        dst = src.scaled_to(width, height)
        # Output column u looks at input coordinate (u - dst.cx) / dst.fx * src.fx + src.cx.
        u = np.arange(2, width - 2)
        np.testing.assert_allclose(resized[height // 2, u], (u - dst.cx) / dst.fx * src.fx + src.cx, atol=1e-3)


def test_resize_nearest_is_centre_aligned():
    image = np.arange(4 * 6).reshape(4, 6)
    np.testing.assert_array_equal(resize_nearest(image, 12, 8), image.repeat(2, 0).repeat(2, 1))
    # Halving picks the second of each pair (the one whose centre is nearest; ties go right, like rounding up).
    np.testing.assert_array_equal(resize_nearest(image, 3, 2), image[1::2, 1::2])


# ----- back-projection against the synthetic scene's exact geometry ------------------------------------------------

def test_depth_pixels_backproject_onto_the_true_surfaces(synthetic_scene):  # noqa: F811
    """Depth-grid pixels of each box (ray-cast at depth resolution) back-project, through the depth intrinsics and
    the pose, onto that box's surface, and their centroid is the ground-truth visible centroid within 1 cm."""
    scene, items = _objects(synthetic_scene)
    for frame_id, obj, _ in items:
        pose = scene.pose(frame_id)
        _, _, depth_ids, _ = render(scene.depth_intrinsics, pose)
        points = backproject(scene.read_depth(frame_id), scene.depth_intrinsics, depth_ids == obj["id"])
        world = transform_points(pose, points)
        assert np.percentile(_distance_to_box_surface(world, DEFAULT_BOXES[obj["id"] - 1]), 99) < 0.003
        np.testing.assert_allclose(points.mean(axis=0), obj["visible_centroid_camera"], atol=0.01)


def test_colour_masks_give_3d_targets_within_tolerance(synthetic_scene):  # noqa: F811
    """The node's path: masks on the colour grid (as the model outputs them), depth at another resolution and
    calibration. Nearest-pixel mapping puts some boundary pixels' depth on the surface behind; the depth-cluster
    rule drops them, so centroids are within 1 cm of the true visible-surface centroid (a plain mean of every
    point is off by up to 1.5 cm here, a per-axis percentile trim by up to 1.9 cm); boxes lie on the object."""
    scene, items = _objects(synthetic_scene)
    errors = []
    for frame_id, obj, mask in items:
        (target, points), = targets_3d([mask], scene.read_depth(frame_id), scene.depth_intrinsics,
                                       scene.color_intrinsics, trim_percentile=2.0)
        assert target.valid and target.depth_coverage > 0.97
        errors.append(np.abs(target.centroid - obj["visible_centroid_camera"]).max())
        # The visible surface lies inside the box, so its camera-frame box lies inside the camera-frame box of
        # the true box's 8 corners.
        box = DEFAULT_BOXES[obj["id"] - 1]
        corners = np.array(np.meshgrid(*zip(box.min, box.max))).reshape(3, -1).T
        in_camera = transform_points(np.linalg.inv(scene.pose(frame_id)), corners)
        assert (target.bbox_min > in_camera.min(axis=0) - 0.01).all()
        assert (target.bbox_max < in_camera.max(axis=0) + 0.01).all()
        mask_points, _ = DepthProjector(scene.read_depth(frame_id), scene.depth_intrinsics,
                                        scene.color_intrinsics).points_in(mask)
        assert 0.95 * len(mask_points) < target.point_count == len(points) <= len(mask_points)
        np.testing.assert_allclose(points.mean(axis=0), target.centroid, atol=1e-5)  # the points it is made of
    assert max(errors) < 0.01, errors


def test_depth_resampled_to_the_colour_grid(synthetic_scene):  # noqa: F811
    scene, items = _objects(synthetic_scene)
    for frame_id, obj, mask in items:
        depth = depth_to_color_grid(scene.read_depth(frame_id), scene.depth_intrinsics, scene.color_intrinsics)
        assert depth.shape == (scene.color_intrinsics.height, scene.color_intrinsics.width)
        inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)  # away from edges
        world = transform_points(scene.pose(frame_id), backproject(depth, scene.color_intrinsics, inner))
        # A colour pixel takes its nearest depth pixel's value: on a slanted face that is up to half a depth
        # pixel of slope away (a few mm).
        assert np.median(_distance_to_box_surface(world, DEFAULT_BOXES[obj["id"] - 1])) < 0.005


def test_mask_to_depth_grid_matches_a_depth_resolution_render(synthetic_scene):  # noqa: F811
    scene, items = _objects(synthetic_scene)
    for frame_id, obj, mask in items:
        _, _, depth_ids, _ = render(scene.depth_intrinsics, scene.pose(frame_id))
        mapped, truth = mask_to_depth_grid(mask, scene.color_intrinsics, scene.depth_intrinsics), depth_ids == obj["id"]
        assert (mapped & truth).sum() / (mapped | truth).sum() > 0.95


def test_unregistered_depth_camera_with_extrinsics(synthetic_scene):  # noqa: F811
    """A depth camera 2.5 cm to the right of the colour camera (an RGB-D sensor's baseline, unregistered)."""
    scene, items = _objects(synthetic_scene)
    depth_in_color = np.eye(4)
    depth_in_color[0, 3] = 0.025  # depth camera frame -> colour camera frame
    errors, errors_ignoring_extrinsics = [], []
    for frame_id, obj, mask in items:
        _, depth, _, _ = render(scene.depth_intrinsics, scene.pose(frame_id) @ depth_in_color)
        depth = np.where(depth > 0, depth, np.nan).astype(np.float32)
        projector = DepthProjector(depth, scene.depth_intrinsics, scene.color_intrinsics, depth_in_color)
        points, coverage = projector.points_in(mask)
        assert coverage > 0.95  # the occlusion test keeps the object's own points
        errors.append(np.linalg.norm(points.mean(axis=0) - obj["visible_centroid_camera"]))
        ignored = DepthProjector(depth, scene.depth_intrinsics, scene.color_intrinsics).points_in(mask)[0]
        errors_ignoring_extrinsics.append(np.linalg.norm(ignored.mean(axis=0) - obj["visible_centroid_camera"]))
    # The depth camera sees a slightly different part of each surface (parallax): 1.5 cm rather than 1 cm.
    assert max(errors) < 0.015, errors
    assert np.mean(errors) < 0.5 * np.mean(errors_ignoring_extrinsics), (errors, errors_ignoring_extrinsics)


# ----- per-mask summaries --------------------------------------------------------------------------------------

def test_background_bleed_is_dropped_and_clean_objects_kept_whole():
    rng = np.random.default_rng(1)
    obj = rng.uniform([-0.1, -0.1, 1.9], [0.1, 0.1, 2.1], (1000, 3))
    bleed = rng.uniform([-0.1, -0.1, 4.0], [0.1, 0.1, 5.0], (10, 3))  # 1% of the mask on the wall behind
    target = target_from_points(np.vstack([obj, bleed]), trim_percentile=2.0)
    assert target.valid and target.bbox_max[2] < 2.11 and target.point_count == 1000
    np.testing.assert_allclose(target.centroid, obj.mean(axis=0), atol=1e-6)  # the bleed is gone, nothing else
    assert target.depth_coverage == 1.0
    untrimmed_box = target_from_points(np.vstack([obj, bleed]), trim_percentile=0.0)
    assert untrimmed_box.point_count == 1000 and untrimmed_box.bbox_max[2] == pytest.approx(obj[:, 2].max())
    # An oblique floor seen from 1 m to 4 m has no depth gap: kept whole, however far it reaches.
    floor = np.stack([rng.uniform(-1, 1, 5000), np.full(5000, 0.8), rng.uniform(1.0, 4.0, 5000)], axis=1)
    assert target_from_points(floor, trim_percentile=0.0).point_count == 5000
    raw = target_from_points(np.vstack([obj, bleed]), trim_percentile=0.0, depth_gap=10.0)
    assert raw.point_count == 1010 and raw.bbox_max[2] > 4.0
    np.testing.assert_allclose(raw.bbox_center, (raw.bbox_min + raw.bbox_max) / 2)
    np.testing.assert_allclose(raw.bbox_size, raw.bbox_max - raw.bbox_min)


def test_too_few_points_is_invalid():
    target = target_from_points(np.ones((5, 3)), min_points=10, depth_coverage=0.1)
    assert not target.valid and target.point_count == 5 and target.depth_coverage == 0.1
    assert not target_from_points(np.zeros((0, 3))).valid


def test_mask_without_depth_is_invalid_not_an_error():
    k = CameraIntrinsics(100, 100, 31.5, 23.5, 64, 48)
    mask = np.zeros((48, 64), bool)
    mask[10:20, 10:20] = True
    (target, points), = targets_3d([mask], np.full((48, 64), np.nan, np.float32), k, k)
    assert not target.valid and len(points) == 0 and target.depth_coverage == 0.0


def _matrix_from_quaternion(x, y, z, w):
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def test_quaternion_from_matrix():
    rz90 = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(quaternion_from_matrix(rz90), [0, 0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)
    np.testing.assert_allclose(np.abs(quaternion_from_matrix(np.diag([1.0, -1, -1]))), [1, 0, 0, 0], atol=1e-12)
    rng = np.random.default_rng(2)
    for _ in range(50):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        q *= np.sign(np.linalg.det(q))  # a proper rotation
        np.testing.assert_allclose(_matrix_from_quaternion(*quaternion_from_matrix(q)), q, atol=1e-9)


# ----- the scene reader ----------------------------------------------------------------------------------------

def test_scannet_reader(synthetic_scene, tmp_path):  # noqa: F811
    scene = ScanNetScene.open(synthetic_scene)
    assert scene.frame_ids == (0, 1, 2, 3)
    assert (scene.color_intrinsics.width, scene.color_intrinsics.height) == (324, 242)
    assert (scene.depth_intrinsics.width, scene.depth_intrinsics.height) == (160, 120)
    np.testing.assert_array_equal(scene.color_from_depth, np.eye(4))
    assert scene.read_color(0).shape == (242, 324, 3) and scene.read_depth_mm(0).dtype == np.uint16
    depth = scene.read_depth(0)
    assert depth.dtype == np.float32 and np.nanmin(depth) > 0.5 and np.nanmax(depth) < 10

    # Numeric order, untracked (-inf) poses and missing extrinsics, on a copy.
    import shutil
    copy = tmp_path / "scene"
    shutil.copytree(synthetic_scene, copy)
    for sub, ext in [("color", "jpg"), ("depth", "png")]:
        shutil.copy(copy / sub / f"1.{ext}", copy / sub / f"10.{ext}")
    (copy / "pose" / "10.txt").write_text("\n".join(["-inf -inf -inf -inf"] * 4))
    for name in ("extrinsic_color.txt", "extrinsic_depth.txt"):
        (copy / "intrinsic" / name).unlink()
    other = ScanNetScene.open(copy)
    assert other.frame_ids == (0, 1, 2, 3, 10)
    assert other.pose(10) is None and other.pose(3).shape == (4, 4)
    np.testing.assert_array_equal(other.color_from_depth, np.eye(4))
