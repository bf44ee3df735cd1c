"""The generated msg/srv interfaces (built by scripts/build_interfaces.sh), the package manifest, and the message
builders of lisa_ros.ros_conversions."""
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.serialization import deserialize_message, serialize_message
from ros_fixtures import ROOT, ros_context, ros_domain, subprocess_env  # noqa: F401
from sensor_msgs.msg import CameraInfo, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

import lisa_ros
import lisa_ros.image_conversion
from lisa_ros.geometry import CameraIntrinsics, Target3DResult
from lisa_ros.image_conversion import image_to_numpy, mask_to_image
from lisa_ros.msg import SegmentationResult, Target3D
from lisa_ros.ros_conversions import (
    camera_info_from_intrinsics, cloud_to_array, intrinsics_from_camera_info, pose_stamped_from_matrix,
    points_to_cloud, target_markers, target_to_msg, transform_stamped_from_matrix,
)
from lisa_ros.action import ReasonSegment as ReasonSegmentAction
from lisa_ros.srv import ReasonSegment

TARGET = Target3DResult(True, np.array([0.1, -0.2, 2.0]), np.array([0.0, -0.3, 1.9]), np.array([0.2, -0.1, 2.1]),
                        420, 0.75)  # 0.75: exact in float32, so round trips compare equal


def _fields(msg_type) -> dict:
    return msg_type.get_fields_and_field_types()


def test_fields_and_types():
    assert _fields(Target3D) == {"valid": "boolean", "centroid": "geometry_msgs/Point",
                                 "bbox_center": "geometry_msgs/Point", "bbox_size": "geometry_msgs/Vector3",
                                 "point_count": "uint32", "depth_coverage": "float"}
    answer = {"text": "string", "masks": "sequence<sensor_msgs/Image>", "mask_scores": "sequence<float>",
              "mask_areas": "sequence<uint32>", "targets": "sequence<lisa_ros/Target3D>",
              "inference_time": "double", "header": "std_msgs/Header", "generated_tokens": "uint32",
              "image_encoding_time": "double", "mask_labels": "sequence<string>", "rejected": "boolean",
              "rejected_labels": "sequence<string>", "model_family": "string", "model_checkpoint": "string"}
    assert _fields(SegmentationResult) == {"instruction": "string", **answer}
    assert _fields(ReasonSegment.Request) == {
        "instruction": "string", "image": "sensor_msgs/Image", "depth": "sensor_msgs/Image",
        "camera_info": "sensor_msgs/CameraInfo", "depth_camera_info": "sensor_msgs/CameraInfo",
        "explain": "boolean", "max_new_tokens": "uint32"}
    assert _fields(ReasonSegment.Response) == {"success": "boolean", "message": "string", **answer}
    # the action asks the service's question and answers with the service's response
    assert _fields(ReasonSegmentAction.Goal) == _fields(ReasonSegment.Request)
    assert _fields(ReasonSegmentAction.Result) == _fields(ReasonSegment.Response)
    assert _fields(ReasonSegmentAction.Feedback) == {
        "stage": "string", "queue_position": "uint32", "text": "string", "generated_tokens": "uint32",
        "tokens_per_second": "float", "elapsed": "double"}
    stages = {getattr(ReasonSegmentAction.Feedback, k) for k in dir(ReasonSegmentAction.Feedback)
              if k.startswith("STAGE_")}
    assert stages == {"waiting", "encoding_image", "generating", "decoding_masks", "computing_3d"}


def _result() -> SegmentationResult:
    header = Header(frame_id="camera_color_optical_frame")
    header.stamp.sec, header.stamp.nanosec = 1700000000, 5
    mask = np.zeros((24, 32), bool)
    mask[4:10, 6:20] = True
    return SegmentationResult(header=header, instruction="where would I put the clothes?", text="The basket.",
                              masks=[mask_to_image(mask, header)], mask_scores=[0.87], mask_areas=[int(mask.sum())],
                              targets=[target_to_msg(TARGET)], inference_time=1.5)


def test_serialisation_round_trip():
    result = _result()
    back = deserialize_message(serialize_message(result), SegmentationResult)
    assert back == result
    assert back.targets[0].point_count == 420 and back.targets[0].bbox_size.x == pytest.approx(0.2)
    assert (image_to_numpy(back.masks[0]) == 255).sum() == back.mask_areas[0] == 84

    response = ReasonSegment.Response(success=True, message="", text=result.text, masks=result.masks,
                                      mask_scores=result.mask_scores, mask_areas=result.mask_areas,
                                      targets=result.targets, inference_time=0.25, header=result.header)
    assert deserialize_message(serialize_message(response), ReasonSegment.Response) == response
    request = ReasonSegment.Request(instruction="what can I sit on?", explain=True, max_new_tokens=16)
    back = deserialize_message(serialize_message(request), ReasonSegment.Request)
    assert back == request and not back.image.data and back.camera_info.width == 0  # empty = use the camera's


def test_generated_and_hand_written_modules_share_the_package():
    """Hand-written modules come from the source tree, msg/srv from the build - whatever the working directory."""
    assert Path(lisa_ros.image_conversion.__file__).parent == ROOT / "lisa_ros"
    code = ("import lisa_ros.geometry, lisa_ros.srv, lisa_ros.msg; from lisa_ros.srv import ReasonSegment; "
            "print(lisa_ros.geometry.__file__); print(lisa_ros.srv.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", env=subprocess_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    geometry_file, srv_file = out.stdout.split()
    assert Path(geometry_file) == ROOT / "lisa_ros" / "geometry.py"
    assert Path(srv_file).name == "__init__.py" and Path(srv_file).parent.name == "srv"


def test_package_manifest():
    from catkin_pkg.package import parse_package

    package = parse_package(str(ROOT / "package.xml"))
    assert package.package_format == 3 and package.name == "lisa_ros" and package.licenses == ["Apache-2.0"]
    assert package.get_build_type() == "ament_cmake"
    assert [g.name for g in package.member_of_groups] == ["rosidl_interface_packages"]
    names = {d.name for d in package.build_depends + package.exec_depends + package.buildtool_depends}
    assert {"ament_cmake", "rosidl_default_generators", "rosidl_default_runtime", "rclpy", "std_msgs",
            "sensor_msgs", "geometry_msgs", "visualization_msgs", "lifecycle_msgs", "std_srvs"} <= names


def test_service_call_over_dds(ros_context):  # noqa: F811
    """The generated type support works across the middleware: a ReasonSegment call with masks and targets."""
    server = rclpy.create_node("fake_lisa", context=ros_context)
    client_node = rclpy.create_node("caller", context=ros_context)

    def answer(request, response):
        result = _result()
        response.success, response.text = True, f"you asked: {request.instruction}"
        response.masks, response.targets, response.header = result.masks, result.targets, result.header
        return response

    server.create_service(ReasonSegment, "/fake_lisa/reason_segment", answer)
    client = client_node.create_client(ReasonSegment, "/fake_lisa/reason_segment")
    executor = rclpy.executors.SingleThreadedExecutor(context=ros_context)
    executor.add_node(server)
    executor.add_node(client_node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        assert client.wait_for_service(timeout_sec=10.0)
        response = client.call(ReasonSegment.Request(instruction="the red box"), timeout_sec=10.0)
        assert response.success and response.text == "you asked: the red box"
        assert len(response.masks) == 1 and response.targets[0].centroid.z == pytest.approx(2.0)
    finally:
        executor.shutdown()
        server.destroy_node()
        client_node.destroy_node()


# ----- ros_conversions -------------------------------------------------------------------------------------------

def test_point_cloud_round_trip_with_colour_and_labels():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (50, 3)).astype(np.uint8)
    labels = np.arange(50) % 3
    msg = points_to_cloud(points, Header(frame_id="cam"), rgb=rgb, labels=labels)
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb", "label"]
    assert [f.datatype for f in msg.fields] == [PointField.FLOAT32] * 4 + [PointField.UINT32]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 50, 20, 1000) and msg.is_dense
    back = cloud_to_array(deserialize_message(serialize_message(msg), type(msg)))
    np.testing.assert_array_equal(np.stack([back["x"], back["y"], back["z"]], axis=1), points)
    packed = back["rgb"].view(np.uint32)
    np.testing.assert_array_equal(np.stack([packed >> 16, (packed >> 8) & 255, packed & 255], axis=1), rgb)
    np.testing.assert_array_equal(back["label"], labels)
    empty = points_to_cloud(np.zeros((0, 3)), Header())
    assert empty.width == 0 and len(empty.data) == 0 and [f.name for f in empty.fields] == ["x", "y", "z"]


def test_markers_clear_then_box_and_label_per_valid_target():
    header = Header(frame_id="cam")
    markers = target_markers([TARGET, Target3DResult.invalid(), TARGET], header, labels=["basket", "-", "chair"])
    kinds = [(m.action, m.type) for m in markers.markers]
    assert kinds[0][0] == Marker.DELETEALL
    assert kinds[1:] == [(Marker.ADD, Marker.CUBE), (Marker.ADD, Marker.TEXT_VIEW_FACING)] * 2
    box, label = markers.markers[1], markers.markers[2]
    assert (box.pose.position.x, box.pose.position.y, box.pose.position.z) == pytest.approx((0.1, -0.2, 2.0))
    assert (box.scale.x, box.scale.y, box.scale.z) == pytest.approx((0.2, 0.2, 0.2))
    assert label.text == "basket" and label.pose.position.y < TARGET.bbox_min[1]  # above the box (-y is up)
    assert markers.markers[4].text == "chair" and len({m.id for m in markers.markers[1:]}) == 4


def test_camera_info_and_intrinsics():
    k = CameraIntrinsics(292.4, 291.8, 161.2, 122.1, 324, 242)
    info = camera_info_from_intrinsics(k, Header(frame_id="cam"))
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.0] * 5 and info.p[3] == 0.0
    assert intrinsics_from_camera_info(deserialize_message(serialize_message(info), CameraInfo)) == k
    info.binning_x = 2
    with pytest.raises(ValueError, match="binning"):
        intrinsics_from_camera_info(info)


def test_pose_and_transform_messages():
    pose = np.eye(4)
    pose[:3, :3] = [[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]
    pose[:3, 3] = [1.0, 2.0, 3.0]
    msg = pose_stamped_from_matrix(pose, Header(frame_id="map"))
    q = msg.pose.orientation
    assert (q.x, q.y, q.z, q.w) == pytest.approx((0, 0, np.sqrt(0.5), np.sqrt(0.5)))
    assert (msg.pose.position.x, msg.pose.position.z) == (1.0, 3.0) and msg.header.frame_id == "map"
    tf = transform_stamped_from_matrix(pose, Header(frame_id="map"), "camera_color_optical_frame")
    assert tf.child_frame_id == "camera_color_optical_frame" and tf.transform.translation.y == 2.0
    assert tf.transform.rotation == msg.pose.orientation


def test_answer_fills_labels_rejections_and_who_answered():
    """What a family adds (per-mask phrases, rejected targets) and who answered reach every result message."""
    from lisa_ros.answering import Answer

    masks = np.zeros((2, 4, 6), bool)
    masks[0, 1, 2] = masks[1, 3, 5] = True
    answer = Answer(success=True, text="the mug and the plate", header=Header(frame_id="cam"), masks=masks,
                    scores=[0.9, 0.8], areas=[1, 1], labels=["the mug", "the plate"], rejected=["the spoon"],
                    family="glamm", checkpoint="/models/GLaMM-FullScope")
    for msg in (SegmentationResult(), ReasonSegment.Response(), ReasonSegmentAction.Result()):
        answer.fill(msg)
        assert list(msg.mask_labels) == ["the mug", "the plate"] and len(msg.masks) == 2
        assert msg.rejected and list(msg.rejected_labels) == ["the spoon"]
        assert (msg.model_family, msg.model_checkpoint) == ("glamm", "/models/GLaMM-FullScope")
    answer.rejected = []
    msg = SegmentationResult()
    answer.fill(msg)
    assert not msg.rejected and list(msg.rejected_labels) == []
