"""The scene player as a real subprocess: live topics received over DDS, and bags read back with rosbags."""
import signal
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import pytest
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from ros_fixtures import ROOT, ros_context, ros_domain, subprocess_env, synthetic_scene  # noqa: F401
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from lisa_ros.image_conversion import compressed_to_rgb, depth_to_metres, image_to_numpy, image_to_rgb
from lisa_ros.ros_conversions import intrinsics_from_camera_info
from lisa_ros.scenes.scannet import ScanNetScene

TOPICS = {
    "/camera/color/image_raw": Image, "/camera/color/image_raw/compressed": CompressedImage,
    "/camera/color/camera_info": CameraInfo, "/camera/depth/image_raw": Image,
    "/camera/depth/camera_info": CameraInfo, "/camera/pose": PoseStamped,
}


def _player(scene_dir, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lisa_ros.scene_player", "--scene", str(scene_dir), *args],
                            cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def _frame_of(scene: ScanNetScene, rgb: np.ndarray) -> int:
    """Which frame of the scene an exactly transmitted colour image is."""
    matches = [i for i in scene.frame_ids if np.array_equal(scene.read_color(i), rgb)]
    assert len(matches) == 1
    return matches[0]


def test_live_frames_arrive_with_matching_stamps(synthetic_scene, ros_context):  # noqa: F811
    scene = ScanNetScene.open(synthetic_scene)
    node = rclpy.create_node("scene_listener", context=ros_context)
    by_stamp: dict[tuple, dict] = defaultdict(dict)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    for topic, msg_type in TOPICS.items():
        # Colour as lisa_node subscribes (best effort): the player's reliable publishers must match it too.
        qos = qos_profile_sensor_data if topic == "/camera/color/image_raw" else reliable
        node.create_subscription(msg_type, topic, lambda msg, t=topic: by_stamp[
            (msg.header.stamp.sec, msg.header.stamp.nanosec)].__setitem__(t, msg), qos)
    executor = rclpy.executors.SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    player = _player(synthetic_scene, "--rate", "10", "--loop", "--compressed")
    complete = None
    try:
        deadline = time.monotonic() + 60
        while complete is None and time.monotonic() < deadline and player.poll() is None:
            executor.spin_once(timeout_sec=0.1)
            complete = next((m for m in by_stamp.values() if len(m) == len(TOPICS)), None)
    finally:
        output = _stop(player)
        executor.shutdown()
        node.destroy_node()
    assert complete is not None, f"no complete frame received; player said:\n{output}"
    assert player.returncode == 0, output

    color = image_to_rgb(complete["/camera/color/image_raw"])
    frame = _frame_of(scene, color)
    np.testing.assert_array_equal(compressed_to_rgb(complete["/camera/color/image_raw/compressed"]), color)
    depth = complete["/camera/depth/image_raw"]
    assert depth.encoding == "16UC1" and depth.header.frame_id == "camera_depth_optical_frame"
    np.testing.assert_array_equal(image_to_numpy(depth), scene.read_depth_mm(frame))
    np.testing.assert_allclose(depth_to_metres(depth), scene.read_depth(frame))
    assert complete["/camera/color/image_raw"].header.frame_id == "camera_color_optical_frame"
    assert intrinsics_from_camera_info(complete["/camera/color/camera_info"]) == scene.color_intrinsics
    assert intrinsics_from_camera_info(complete["/camera/depth/camera_info"]) == scene.depth_intrinsics
    pose = complete["/camera/pose"]
    assert pose.header.frame_id == "map"
    np.testing.assert_allclose([pose.pose.position.x, pose.pose.position.y, pose.pose.position.z],
                               scene.pose(frame)[:3, 3], atol=1e-9)


@pytest.mark.parametrize("suffix, storage", [(".mcap", "mcap"), (".db3", "sqlite3")])
def test_bag_is_written_and_reads_back(synthetic_scene, ros_domain, tmp_path, suffix, storage):  # noqa: F811
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    scene = ScanNetScene.open(synthetic_scene)
    player = _player(synthetic_scene, "--rate", "20", "--bag", str(tmp_path / f"run{suffix}"))
    try:
        player.wait(timeout=60)  # without --loop the player stops after the last frame
    finally:
        output = _stop(player)
    assert player.returncode == 0, output
    bag = tmp_path / "run"
    assert f"wrote {len(scene) * 5} messages to {bag}" in output

    typestore = get_typestore(Stores.ROS2_KILTED)
    stamps: dict[str, list[int]] = defaultdict(list)
    assert f"storage_identifier: {storage}" in (bag / "metadata.yaml").read_text()
    assert (bag / f"run{suffix}").is_file()
    with Reader(bag) as reader:
        assert {c.topic: c.msgcount for c in reader.connections} == {
            t: len(scene) for t in TOPICS if not t.endswith("compressed")}
        for connection, timestamp, raw in reader.messages():
            msg = typestore.deserialize_cdr(raw, connection.msgtype)
            assert timestamp == msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            stamps[connection.topic].append(timestamp)
            if connection.topic == "/camera/color/image_raw":
                frame = scene.frame_ids[len(stamps[connection.topic]) - 1]
                np.testing.assert_array_equal(image_to_rgb(deserialize_message(raw, Image)), scene.read_color(frame))
    # One stamp per frame, shared by every topic, increasing.
    color_stamps = stamps["/camera/color/image_raw"]
    assert all(s == color_stamps for s in stamps.values()) and color_stamps == sorted(set(color_stamps))
