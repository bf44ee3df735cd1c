"""From an Answer to ROS messages on the node's topics (answering.py makes the Answer)."""
from __future__ import annotations

import queue
import threading

import numpy as np

from .answering import Answer
from .image_conversion import mask_to_image, rgb_to_image


class OutputPublishers:
    """The node's output topics; each can be switched off by a publish_* parameter.

    `publish` hands the answer to a worker thread and returns at once, so a service response is not held back by
    drawing the overlay (~16 ms for one mask at 640x480 here) and building point clouds. The worker publishes
    answers in order; a full queue (a slow consumer of many continuous answers) makes `publish` wait.
    """

    def __init__(self, node, settings, queue_size: int = 8):
        from sensor_msgs.msg import Image, PointCloud2
        from std_msgs.msg import String
        from visualization_msgs.msg import MarkerArray

        from lisa_ros.msg import SegmentationResult

        self.node, self.settings = node, settings
        s = settings
        self.result = node.create_publisher(SegmentationResult, "~/result", 10)
        self.mask = node.create_publisher(Image, "~/mask", 10) if s.publish_mask else None
        self.overlay = node.create_publisher(Image, "~/overlay", 10) if s.publish_overlay else None
        self.answer = node.create_publisher(String, "~/answer", 10) if s.publish_answer else None
        self.points = node.create_publisher(PointCloud2, "~/points", 10) if s.publish_points else None
        self.markers = node.create_publisher(MarkerArray, "~/markers", 10) if s.publish_markers else None
        self._pending: queue.Queue = queue.Queue(maxsize=queue_size)
        self._worker = threading.Thread(target=self._drain, name="lisa_outputs", daemon=True)
        self._worker.start()

    def publish(self, a: Answer) -> None:
        """Queue a successful answer for publication on every enabled topic."""
        self._pending.put(a)

    def _drain(self) -> None:
        while (a := self._pending.get()) is not None:
            if not self.node.context.ok():  # shutting down: nobody is listening any more
                continue
            try:
                self.publish_now(a)
            except Exception as e:  # noqa: BLE001 - one bad answer must not stop later publications
                self.node.get_logger().error(f"publishing the answer failed: {type(e).__name__}: {e}")

    def publish_now(self, a: Answer) -> None:
        from std_msgs.msg import String

        from lisa_model.visualization import PALETTE, draw_overlay
        from lisa_ros.msg import SegmentationResult

        from .ros_conversions import points_to_cloud, target_markers

        msg = SegmentationResult()
        msg.header = a.header
        msg.instruction = a.instruction
        a.fill(msg)
        self.result.publish(msg)
        if self.answer is not None:
            self.answer.publish(String(data=a.text))
        if self.mask is not None and a.image is not None:
            union = a.masks.any(0) if len(a.masks) else np.zeros(a.image.shape[:2], bool)
            self.mask.publish(mask_to_image(union, a.header))
        if self.overlay is not None and a.image is not None:
            self.overlay.publish(rgb_to_image(draw_overlay(a.image, a.masks, a.text, labels=a.labels), a.header))
        if a.targets:
            if self.points is not None:
                labels = np.concatenate([np.full(len(p), i, np.uint32) for i, p in enumerate(a.points)])
                colours = PALETTE[labels % len(PALETTE)]
                self.points.publish(points_to_cloud(np.vstack(a.points), a.header, rgb=colours, labels=labels))
            if self.markers is not None:
                names = [(a.labels[i] if i < len(a.labels) and a.labels[i] else a.text)[:40]
                         for i in range(len(a.targets))]  # the phrase a mask grounds, else the answer
                self.markers.publish(target_markers(a.targets, a.header, [f"{i}: {n}" for i, n in enumerate(names)]))

    def destroy(self) -> None:
        """Publish what is queued, stop the worker, destroy the publishers."""
        self._pending.put(None)
        self._worker.join()
        for pub in (self.result, self.mask, self.overlay, self.answer, self.points, self.markers):
            if pub is not None:
                self.node.destroy_publisher(pub)
