"""Write rclpy messages to a ROS 2 bag (mcap or sqlite3) with rosbags - no rosbag2 / ros2cli needed.

Messages are serialised by rclpy itself (the exact CDR bytes a publisher sends), so what is in the bag is what
was on the wire; rosbags only supplies the container and the message definitions for the bag's metadata.
"""
from __future__ import annotations

from pathlib import Path

from rclpy.serialization import serialize_message

STORAGE_BY_SUFFIX = {".mcap": "mcap", ".db3": "sqlite3"}


def bag_directory(path) -> tuple[Path, str]:
    """(bag directory, storage) for a path like OUT.mcap or OUT.db3: a rosbag2 bag is a directory (OUT/ holding
    OUT.mcap or OUT.db3 plus metadata.yaml); the suffix picks the storage. No known suffix: OUT/ with mcap."""
    path = Path(path)
    storage = STORAGE_BY_SUFFIX.get(path.suffix)
    return (path.with_suffix(""), storage) if storage else (path, "mcap")


def ros_type_name(msg) -> str:
    """'sensor_msgs/msg/Image' for an rclpy sensor_msgs.msg.Image instance."""
    cls = type(msg)
    package, kind = cls.__module__.split(".")[:2]
    return f"{package}/{kind}/{cls.__name__}"


class BagWriter:
    """Append messages to a new bag; topics are registered on first use. Use as a context manager or call close()
    (an mcap file without its footer is unreadable)."""

    def __init__(self, path, storage: str | None = None):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        directory, guessed = bag_directory(path)
        self.path = directory
        self.storage = storage or guessed
        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[self.storage]
        self._typestore = get_typestore(Stores.ROS2_KILTED)
        self._writer = Writer(directory, version=9, storage_plugin=plugin)
        self._writer.open()
        self._connections: dict[str, object] = {}
        self.count = 0

    def write(self, topic: str, msg, stamp_ns: int) -> None:
        """Record `msg` on `topic` at bag time stamp_ns (ns since the epoch; use the message's header stamp)."""
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, ros_type_name(msg), typestore=self._typestore)
            self._connections[topic] = connection
        self._writer.write(connection, int(stamp_ns), serialize_message(msg))
        self.count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
