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
    _assert_tf_state_logged(output)

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


def test_wait_for_subscriber_holds_the_first_frame(synthetic_scene, ros_context):  # noqa: F811
    """A listener that comes up late still gets the scene from its first frame; the player says what it sent."""
    scene = ScanNetScene.open(synthetic_scene)
    player = _player(synthetic_scene, "--rate", "20", "--wait-for-subscriber")
    node = rclpy.create_node("late_listener", context=ros_context)
    executor = rclpy.executors.SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    received: list[Image] = []
    try:
        time.sleep(2.0)  # without the option, 40 frames would be gone by now (and the player would have exited)
        assert player.poll() is None, "the player did not wait"
        node.create_subscription(Image, "/camera/color/image_raw", received.append,
                                 QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        deadline = time.monotonic() + 60
        while player.poll() is None and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        for _ in range(20):  # what is still in flight
            executor.spin_once(timeout_sec=0.05)
    finally:
        output = _stop(player)
        executor.shutdown()
        node.destroy_node()
    assert received, output
    assert _frame_of(scene, image_to_rgb(received[0])) == scene.frame_ids[0]
    assert f"published {len(scene)} frames" in output


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
    if storage == "mcap":
        assert _read_with_mcap_ros2(bag / f"run{suffix}", scene) == stamps
    _assert_tf_state_logged(output)


def _assert_tf_state_logged(output: str) -> None:
    """Without tf2_ros (PyPI ROS) the player says once that it publishes no TF; with it, nothing."""
    try:
        import tf2_ros  # noqa: F401
    except ImportError:
        assert output.count("tf2_ros cannot be imported") == 1 and "no TF is published" in output
    else:
        assert "tf2_ros cannot be imported" not in output


def _read_with_mcap_ros2(path, scene: ScanNetScene) -> dict[str, list[int]]:
    """Decode the player's mcap with mcap-ros2-support, which parses the message definitions stored in the file
    (rosbags above reads with its own type store): every field must come back. Returns topic -> log times."""
    from mcap_ros2.reader import read_ros2_messages

    schemas = {t: f"{m.__module__.split('.')[0]}/msg/{m.__name__}" for t, m in TOPICS.items()}
    stamps: dict[str, list[int]] = defaultdict(list)
    for m in read_ros2_messages(str(path)):
        topic, msg = m.channel.topic, m.ros_msg
        assert m.schema.name == schemas[topic] and m.schema.encoding == "ros2msg"
        assert m.log_time_ns == msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        stamps[topic].append(m.log_time_ns)
        frame = scene.frame_ids[len(stamps[topic]) - 1]
        if topic == "/camera/color/image_raw":
            assert (msg.encoding, msg.height, msg.width) == ("rgb8", *scene.read_color(frame).shape[:2])
            rgb = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
            np.testing.assert_array_equal(rgb, scene.read_color(frame))
        elif topic == "/camera/depth/image_raw":
            assert msg.encoding == "16UC1" and msg.header.frame_id == "camera_depth_optical_frame"
            depth = np.frombuffer(bytes(msg.data), "<u2" if not msg.is_bigendian else ">u2")
            np.testing.assert_array_equal(depth.reshape(msg.height, msg.width), scene.read_depth_mm(frame))
        elif topic.endswith("camera_info"):
            intrinsics = scene.color_intrinsics if "color" in topic else scene.depth_intrinsics
            assert (msg.width, msg.height) == (intrinsics.width, intrinsics.height)
            np.testing.assert_array_equal(np.reshape(msg.k, (3, 3)), intrinsics.matrix)
        elif topic == "/camera/pose":
            assert msg.header.frame_id == "map"
            p = msg.pose.position
            np.testing.assert_allclose([p.x, p.y, p.z], scene.pose(frame)[:3, 3], atol=1e-9)
    return stamps
