"""ROS message building for 3D results: PointCloud2 (without sensor_msgs_py), RViz markers, CameraInfo, poses.

The maths lives in geometry.py (no ROS); this module only moves its arrays into and out of messages.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion, Transform, TransformStamped, Vector3
from sensor_msgs.msg import CameraInfo, PointCloud2, PointField
from visualization_msgs.msg import Marker, MarkerArray

from lisa_model.visualization import PALETTE

from .geometry import CameraIntrinsics, Target3DResult, quaternion_from_matrix

# PointField datatype -> NumPy dtype (little-endian, as we write them).
_FIELD_DTYPES = {
    PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "<i2", PointField.UINT16: "<u2",
    PointField.INT32: "<i4", PointField.UINT32: "<u4", PointField.FLOAT32: "<f4", PointField.FLOAT64: "<f8",
}



def mask_color(index: int) -> np.ndarray:
    """RGB in [0, 1] for mask `index`: the overlay's colour of that mask, so markers, clouds and overlay agree."""
    return PALETTE[index % len(PALETTE)] / 255.0


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Nx3 uint8 RGB -> N float32 holding 0x00RRGGBB in its bits: PCL's / RViz's "rgb" field convention."""
    rgb = np.asarray(rgb, dtype=np.uint32)
    return ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).view(np.float32)


def points_to_cloud(points: np.ndarray, header, rgb: np.ndarray | None = None,
                    labels: np.ndarray | None = None) -> PointCloud2:
    """An unorganised PointCloud2 (height 1) with float32 fields x, y, z (m), optionally "rgb" (packed float32,
    from Nx3 uint8) and "label" (uint32, e.g. the mask index per point)."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    n = len(points)
    layout = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    layout += [("rgb", "<f4")] if rgb is not None else []
    layout += [("label", "<u4")] if labels is not None else []
    cloud = np.zeros(n, dtype=np.dtype(layout))
    cloud["x"], cloud["y"], cloud["z"] = points[:, 0], points[:, 1], points[:, 2]
    if rgb is not None:
        cloud["rgb"] = pack_rgb(np.asarray(rgb).reshape(n, 3))
    if labels is not None:
        cloud["label"] = np.asarray(labels).reshape(n)
    datatype = {"<f4": PointField.FLOAT32, "<u4": PointField.UINT32}
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = 1, n
    msg.fields = [PointField(name=name, offset=cloud.dtype.fields[name][1], datatype=datatype[dt], count=1)
                  for name, dt in layout]
    msg.is_bigendian = False
    msg.point_step = cloud.dtype.itemsize
    msg.row_step = msg.point_step * n
    msg.is_dense = bool(np.isfinite(points).all())
    msg.data = cloud.tobytes()
    return msg


def cloud_to_array(msg: PointCloud2) -> np.ndarray:
    """A PointCloud2's points as a NumPy structured array (one named field per PointField, count 1 fields)."""
    if msg.is_bigendian:
        raise ValueError("big-endian PointCloud2 is not supported")
    dtype = np.dtype({"names": [f.name for f in msg.fields],
                      "formats": [_FIELD_DTYPES[f.datatype] for f in msg.fields],
                      "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})
    rows = np.frombuffer(memoryview(msg.data).cast("B"), np.uint8).reshape(msg.height, msg.row_step)
    return rows[:, :msg.width * msg.point_step].copy().view(dtype).reshape(-1)


def _point(xyz) -> Point:
    return Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def _vector(xyz) -> Vector3:
    return Vector3(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def target_markers(targets: Sequence[Target3DResult], header, labels: Sequence[str] = (), namespace: str = "lisa",
                   text_height: float = 0.06, min_size: float = 0.01, alpha: float = 0.4) -> MarkerArray:
    """RViz markers for the targets of one answer: a DELETEALL (clears the previous answer's markers), then per
    valid target a translucent CUBE over its 3D box and a TEXT_VIEW_FACING label just above it.

    labels: text per target (default "target i"); text_height (m); min_size (m): floor for box edges so flat or
    one-pixel targets stay visible. Marker ids: 2*i (box) and 2*i + 1 (label) for target i.
    """
    markers = [Marker(header=header, ns=namespace, action=Marker.DELETEALL)]
    for i, target in enumerate(targets):
        if not target.valid:
            continue
        r, g, b = mask_color(i)
        box = Marker(header=header, ns=namespace, id=2 * i, type=Marker.CUBE, action=Marker.ADD)
        box.pose.position = _point(target.bbox_center)
        box.pose.orientation.w = 1.0  # axis-aligned in the camera frame
        box.scale = _vector(np.maximum(target.bbox_size, min_size))
        box.color.r, box.color.g, box.color.b, box.color.a = float(r), float(g), float(b), float(alpha)
        label = Marker(header=header, ns=namespace, id=2 * i + 1, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
        # "Above" in an optical frame is -y; place the text just over the box's top face.
        above = np.array([target.bbox_center[0], target.bbox_min[1] - text_height, target.bbox_center[2]])
        label.pose.position = _point(above)
        label.pose.orientation.w = 1.0
        label.scale.z = float(text_height)
        label.color.r, label.color.g, label.color.b, label.color.a = float(r), float(g), float(b), 1.0
        label.text = labels[i] if i < len(labels) else f"target {i}"
        markers += [box, label]
    return MarkerArray(markers=markers)


def target_to_msg(target: Target3DResult):
    """A lisa_ros/msg/Target3D from a geometry.Target3DResult."""
    from lisa_ros.msg import Target3D  # generated interfaces: imported only where needed

    return Target3D(valid=bool(target.valid), centroid=_point(target.centroid),
                    bbox_center=_point(target.bbox_center), bbox_size=_vector(target.bbox_size),
                    point_count=int(target.point_count), depth_coverage=float(target.depth_coverage))


def intrinsics_from_camera_info(msg: CameraInfo) -> CameraIntrinsics:
    """CameraIntrinsics from a CameraInfo (K, or P when K is empty). Binning / ROI are not supported: they would
    change the pixel grid, so they are refused rather than silently ignored."""
    if msg.binning_x > 1 or msg.binning_y > 1 or msg.roi.width or msg.roi.height:
        raise ValueError("CameraInfo with binning or a region of interest is not supported")
    return CameraIntrinsics.from_camera_info_fields(msg.k, msg.p, int(msg.width), int(msg.height))


def camera_info_from_intrinsics(intrinsics: CameraIntrinsics, header) -> CameraInfo:
    """A CameraInfo for an undistorted pinhole camera (plumb_bob with zero distortion, R = I, P = [K | 0])."""
    k = intrinsics.matrix
    msg = CameraInfo(header=header, width=intrinsics.width, height=intrinsics.height, distortion_model="plumb_bob")
    msg.d = [0.0] * 5
    msg.k = k.reshape(-1).tolist()
    msg.r = np.eye(3).reshape(-1).tolist()
    msg.p = np.hstack([k, np.zeros((3, 1))]).reshape(-1).tolist()
    return msg


def pose_from_matrix(transform: np.ndarray) -> Pose:
    """A geometry_msgs/Pose from a 4x4 rigid transform (translation in m)."""
    x, y, z, w = quaternion_from_matrix(transform[:3, :3])
    return Pose(position=_point(transform[:3, 3]), orientation=Quaternion(x=x, y=y, z=z, w=w))


def pose_stamped_from_matrix(transform: np.ndarray, header) -> PoseStamped:
    """PoseStamped of a 4x4 transform; header.frame_id = the frame the pose is expressed in (e.g. "map")."""
    return PoseStamped(header=header, pose=pose_from_matrix(transform))


def transform_stamped_from_matrix(transform: np.ndarray, header, child_frame_id: str) -> TransformStamped:
    """TransformStamped (for tf2) of a 4x4 transform from child_frame_id to header.frame_id."""
    pose = pose_from_matrix(transform)
    return TransformStamped(header=header, child_frame_id=child_frame_id,
                            transform=Transform(translation=_vector(transform[:3, 3]), rotation=pose.orientation))
