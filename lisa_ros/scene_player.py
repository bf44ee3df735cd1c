"""Play a ScanNet-style scene folder as a live RGB-D camera, and optionally record it to a ROS 2 bag.

    python -m lisa_ros.scene_player --scene DIR [--rate HZ] [--loop] [--wait-for-subscriber] [--compressed]
                                    [--bag OUT.mcap|OUT.db3]
    ros2 run lisa_ros scene_player --scene DIR ...

Per frame, all with the same header stamp (the time of publishing) - the stamp-based pairing lisa_node does:
    <ns>/color/image_raw              sensor_msgs/Image rgb8          frame camera_color_optical_frame
    <ns>/color/image_raw/compressed   sensor_msgs/CompressedImage     (--compressed; the stored JPEG, not re-encoded)
    <ns>/color/camera_info            sensor_msgs/CameraInfo
    <ns>/depth/image_raw              sensor_msgs/Image 16UC1 (mm)    frame camera_depth_optical_frame
    <ns>/depth/camera_info            sensor_msgs/CameraInfo
    <ns>/pose                         geometry_msgs/PoseStamped       colour camera in the map frame (valid poses only)
and, when tf2_ros can be imported, TF map -> colour camera plus a static colour -> depth camera transform.
Topic names match lisa_node's defaults with the default namespace /camera. --bag writes the same messages (TF
excepted) to a bag. Without --loop the player exits after the last frame; on exit it prints how many frames it
published. --wait-for-subscriber holds the first frame until something subscribes to the colour image, so a node
started later sees the scene from its start.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import rclpy
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

from .bag_writer import BagWriter
from .image_conversion import compressed_from_bytes, depth_to_image, rgb_to_image
from .ros_conversions import camera_info_from_intrinsics, pose_stamped_from_matrix, transform_stamped_from_matrix
from .scenes.scannet import ScanNetScene


@dataclass(frozen=True)
class PlayerConfig:
    namespace: str = "/camera"
    map_frame: str = "map"
    color_frame: str = "camera_color_optical_frame"
    depth_frame: str = "camera_depth_optical_frame"
    compressed: bool = False

    def topic(self, name: str) -> str:
        return f"{self.namespace.rstrip('/')}/{name}"


def frame_messages(scene: ScanNetScene, frame_id: int, stamp: Time, config: PlayerConfig) -> list[tuple[str, object]]:
    """(topic, message) pairs for one frame of `scene`, every header stamped `stamp`."""
    color_header = Header(stamp=stamp, frame_id=config.color_frame)
    depth_header = Header(stamp=stamp, frame_id=config.depth_frame)
    messages: list[tuple[str, object]] = [
        (config.topic("color/image_raw"), rgb_to_image(scene.read_color(frame_id), color_header)),
        (config.topic("color/camera_info"), camera_info_from_intrinsics(scene.color_intrinsics, color_header)),
        (config.topic("depth/image_raw"), depth_to_image(scene.read_depth_mm(frame_id), depth_header)),
        (config.topic("depth/camera_info"), camera_info_from_intrinsics(scene.depth_intrinsics, depth_header)),
    ]
    if config.compressed:
        messages.append((config.topic("color/image_raw/compressed"),
                         compressed_from_bytes(scene.color_bytes(frame_id), "jpeg", color_header)))
    pose = scene.pose(frame_id)
    if pose is not None:
        messages.append((config.topic("pose"),
                         pose_stamped_from_matrix(pose, Header(stamp=stamp, frame_id=config.map_frame))))
    return messages


class ScenePlayer(Node):
    """Publishes one frame per timer tick; `finished` turns true after the last frame unless looping."""

    def __init__(self, scene: ScanNetScene, rate: float, loop: bool = False, config: PlayerConfig = PlayerConfig(),
                 bag: BagWriter | None = None, wait_for_subscriber: bool = False):
        super().__init__("scene_player")
        if rate <= 0:
            raise ValueError(f"rate must be > 0 Hz, got {rate}")
        self.scene, self.loop, self.config, self.bag = scene, loop, config, bag
        self.wait_for_subscriber = wait_for_subscriber
        self.finished = False
        self.frames_published = 0
        self._next = 0
        # Reliable, keep last 2: matches both reliable and best-effort (sensor data) subscribers.
        self._qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        self._topic_publishers: dict[str, object] = {}
        # Publishers up front (from the first frame's messages), so subscribers can match before frame 0.
        for topic, msg in frame_messages(scene, scene.frame_ids[0], Time(), config):
            self._publisher(topic, msg)
        self._tf = self._static_tf = None
        self._setup_tf()
        self._timer = self.create_timer(1.0 / rate, self._tick)
        self.get_logger().info(f"playing {len(scene)} frames of {scene.root} at {rate} Hz"
                               f"{' in a loop' if loop else ''}{f', recording to {bag.path}' if bag else ''}")

    def _setup_tf(self) -> None:
        try:  # tf2_ros is not installable from PyPI; a real ROS install has it
            from tf2_ros import StaticTransformBroadcaster, TransformBroadcaster
        except ImportError:
            self.get_logger().warning(
                f"tf2_ros cannot be imported (it comes with a ROS 2 install, not from PyPI): no TF is published; "
                f"the camera pose is on {self.config.topic('pose')} (geometry_msgs/PoseStamped in "
                f"{self.config.map_frame})")
            return
        self._tf = TransformBroadcaster(self)
        self._static_tf = StaticTransformBroadcaster(self)
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.config.color_frame)
        self._static_tf.sendTransform(transform_stamped_from_matrix(self.scene.color_from_depth, header,
                                                                    self.config.depth_frame))

    def _publisher(self, topic: str, msg):
        if topic not in self._topic_publishers:
            self._topic_publishers[topic] = self.create_publisher(type(msg), topic, self._qos)
        return self._topic_publishers[topic]

    def _tick(self) -> None:
        if self.wait_for_subscriber:
            if self._topic_publishers[self.config.topic("color/image_raw")].get_subscription_count() == 0:
                return
            self.wait_for_subscriber = False
        if self._next >= len(self.scene):
            if not self.loop:
                self.finished = True
                self._timer.cancel()
                return
            self._next = 0
        frame_id = self.scene.frame_ids[self._next]
        self._next += 1
        now = self.get_clock().now()
        stamp_ns = now.nanoseconds
        for topic, msg in frame_messages(self.scene, frame_id, now.to_msg(), self.config):
            self._publisher(topic, msg).publish(msg)
            if self.bag is not None:
                self.bag.write(topic, msg, stamp_ns)
            if self._tf is not None and isinstance(msg, PoseStamped):
                self._tf.sendTransform(transform_stamped_from_matrix(self.scene.pose(frame_id), msg.header,
                                                                     self.config.color_frame))
        self.frames_published += 1


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scene_player", description=__doc__.splitlines()[0])
    parser.add_argument("--scene", required=True, help="scene folder (color/, depth/, intrinsic/, pose/)")
    parser.add_argument("--rate", type=float, default=5.0, help="frames per second (Hz)")
    parser.add_argument("--loop", action="store_true", help="start again after the last frame")
    parser.add_argument("--wait-for-subscriber", action="store_true",
                        help="hold the first frame until something subscribes to the colour image")
    parser.add_argument("--compressed", action="store_true", help="also publish <ns>/color/image_raw/compressed")
    parser.add_argument("--bag", help="also record to a new bag: OUT.mcap (mcap) or OUT.db3 (sqlite3); the bag is "
                                      "the directory OUT/")
    parser.add_argument("--namespace", default=PlayerConfig.namespace, help="topic prefix")
    parser.add_argument("--map-frame", default=PlayerConfig.map_frame)
    parser.add_argument("--color-frame", default=PlayerConfig.color_frame)
    parser.add_argument("--depth-frame", default=PlayerConfig.depth_frame)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; argv like sys.argv (program name first, ROS arguments allowed)."""
    argv = sys.argv if argv is None else argv
    args = _parse(rclpy.utilities.remove_ros_args(argv)[1:])
    scene = ScanNetScene.open(args.scene)
    config = PlayerConfig(args.namespace, args.map_frame, args.color_frame, args.depth_frame, args.compressed)
    rclpy.init(args=argv)
    bag = BagWriter(args.bag) if args.bag else None
    node = None
    try:
        node = ScenePlayer(scene, args.rate, args.loop, config, bag, args.wait_for_subscriber)
        while rclpy.ok() and not node.finished:
            rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if bag is not None:
            bag.close()  # before anything else can fail: an unclosed mcap has no footer
            print(f"scene_player: wrote {bag.count} messages to {bag.path}", flush=True)
        if node is not None:
            print(f"scene_player: published {node.frames_published} frames", flush=True)
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
