"""The latest camera frame, kept without backlog: colour, the depth image closest in time, camera infos.

Messages are stored as received and converted only when an answer needs them, so intake stays cheap while an
inference runs. message_filters is not available on every install (nor here), so pairing is by stamp.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any


def stamp_seconds(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


@dataclass
class Frame:
    """One colour image with what belongs to it. depth / infos are None when not (yet) available."""

    color: Any  # sensor_msgs/Image or CompressedImage
    color_info: Any = None  # sensor_msgs/CameraInfo
    depth: Any = None  # sensor_msgs/Image (16UC1 mm or 32FC1 m)
    depth_info: Any = None  # sensor_msgs/CameraInfo of the depth camera (None: registered to colour)
    sequence: int = 0  # increases with every colour frame received

    @property
    def stamp(self) -> float:
        return stamp_seconds(self.color.header)


class FrameStore:
    """Thread-safe latest-frame store. Depth is kept in a short ring so the one nearest the colour stamp wins."""

    def __init__(self, sync_tolerance: float = 0.05, depth_history: int = 8):
        self.sync_tolerance = sync_tolerance
        self._lock = threading.Lock()
        self._color = None
        self._color_info = None
        self._depth_info = None
        self._depths: deque = deque(maxlen=depth_history)
        self._sequence = 0
        self.received = 0  # colour frames received since start (for intake-rate figures)

    def put_color(self, msg) -> None:
        with self._lock:
            self._color = msg
            self._sequence += 1
            self.received += 1

    def put_depth(self, msg) -> None:
        with self._lock:
            self._depths.append(msg)

    def put_color_info(self, msg) -> None:
        with self._lock:
            self._color_info = msg

    def put_depth_info(self, msg) -> None:
        with self._lock:
            self._depth_info = msg

    def latest(self) -> Frame | None:
        """The newest colour frame with its nearest-in-time depth (within sync_tolerance), or None."""
        with self._lock:
            if self._color is None:
                return None
            return Frame(self._color, self._color_info, self._nearest_depth(stamp_seconds(self._color.header)),
                         self._depth_info, self._sequence)

    def for_image(self, color) -> Frame:
        """A caller-supplied image, paired with stored depth/infos only if the stamps agree."""
        with self._lock:
            depth = self._nearest_depth(stamp_seconds(color.header))
            same_camera = self._color is not None and self._color.header.frame_id == color.header.frame_id
            return Frame(color, self._color_info if same_camera else None, depth if same_camera else None,
                         self._depth_info, 0)

    def _nearest_depth(self, stamp: float):
        best, best_dt = None, self.sync_tolerance
        for d in self._depths:
            dt = abs(stamp_seconds(d.header) - stamp)
            if dt <= best_dt:
                best, best_dt = d, dt
        return best

    def clear(self) -> None:
        with self._lock:
            self._color = self._color_info = self._depth_info = None
            self._depths.clear()
