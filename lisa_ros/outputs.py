"""From a frame and an instruction to an Answer, and from an Answer to ROS messages on the node's topics.

`answer_frame` is the one place where inference errors become `success=false` + message; the publishers only
turn a successful Answer into messages.
"""
from __future__ import annotations

import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .frames import Frame
from .geometry import Target3DResult, targets_3d
from .image_conversion import ImageConversionError, color_to_rgb, depth_to_metres, mask_to_image, rgb_to_image

SEG_TOKEN_RE = re.compile(r"\s*\[SEG\]\s*")


def clean_answer(text: str) -> str:
    """The answer as a robot reads it: [SEG] tokens removed, whitespace collapsed."""
    return " ".join(SEG_TOKEN_RE.sub(" ", text).split())


@dataclass
class Answer:
    success: bool
    message: str = ""
    instruction: str = ""
    text: str = ""
    header: Any = None  # std_msgs/Header of the frame used
    image: np.ndarray | None = None  # HxWx3 uint8 RGB frame used
    masks: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), bool))  # bool [N, H, W]
    scores: list[float] = field(default_factory=list)  # mean sigmoid probability inside each mask
    areas: list[int] = field(default_factory=list)  # pixels
    targets: list[Target3DResult] = field(default_factory=list)  # one per mask when depth was available
    points: list[np.ndarray] = field(default_factory=list)  # per mask: Nx3 float32 points (m), camera frame
    inference_time: float = 0.0  # s

    @classmethod
    def failure(cls, message: str, instruction: str = "") -> "Answer":
        return cls(success=False, message=message, instruction=instruction)

    def fill(self, msg) -> None:
        """Fill the fields ReasonSegment.Response and SegmentationResult share."""
        from .ros_conversions import target_to_msg

        if self.header is not None:
            msg.header = self.header
        msg.text = self.text
        msg.masks = [mask_to_image(m, self.header) for m in self.masks]
        msg.mask_scores = [float(s) for s in self.scores]
        msg.mask_areas = [int(a) for a in self.areas]
        msg.targets = [target_to_msg(t) for t in self.targets]
        msg.inference_time = float(self.inference_time)

    def fill_response(self, response) -> None:
        response.success = self.success
        response.message = self.message
        self.fill(response)


def answer_frame(segmenter, settings, instruction: str, frame: Frame | None, max_new_tokens: int,
                 explain: bool) -> Answer:
    """Run the model on `frame`; every bad input or failure comes back as Answer(success=False, message)."""
    if not instruction or not instruction.strip():
        return Answer.failure("instruction is empty", instruction)
    if frame is None:
        return Answer.failure(f"no frame received yet on {settings.color_topic}", instruction)
    try:
        image = color_to_rgb(frame.color, max_pixels=settings.max_image_pixels)
    except ImageConversionError as e:
        return Answer.failure(f"cannot use the image: {e}", instruction)
    t0 = time.perf_counter()
    try:
        result = segmenter.segment(image, instruction.strip(), max_new_tokens=max_new_tokens, explain=explain)
    except ValueError as e:
        return Answer.failure(str(e), instruction)
    except Exception as e:  # noqa: BLE001 - CUDA OOM and friends: report, free, keep serving
        if _is_oom(e):
            _free_cuda()
            return Answer.failure(f"out of memory during inference (cache freed): {e}", instruction)
        return Answer.failure(f"inference failed: {type(e).__name__}: {e}", instruction)
    elapsed = time.perf_counter() - t0
    # Sigmoid only of the pixels inside each mask: the score needs no others (a full-frame exp costs ms per mask).
    scores = [float((1.0 / (1.0 + np.exp(-logits[m]))).mean()) if m.any() else 0.0
              for logits, m in zip(result.mask_logits, result.masks)]
    masks = result.masks
    answer = Answer(success=True, instruction=instruction, text=clean_answer(result.text), header=frame.color.header,
                    image=image,
                    masks=masks, scores=scores,
                    areas=[int(m.sum()) for m in masks], inference_time=elapsed)
    if len(masks) == 0:
        answer.message = "no [SEG] in the answer: text only"
    try:
        results = _targets(frame, masks, settings)
    except (ImageConversionError, ValueError) as e:  # unusable depth: the 2D answer still stands
        answer.message = f"no 3D targets: {e}"
        results = []
    answer.targets = [t for t, _ in results]
    answer.points = [p for _, p in results]
    return answer


def _targets(frame: Frame, masks: np.ndarray, settings) -> list:
    """(Target3DResult, points) per mask, or [] when the frame has no depth or no colour intrinsics.

    Depth at another resolution than colour is fine: each image keeps its own intrinsics (a depth camera
    without a CameraInfo of its own is taken as registered to colour, its intrinsics scaled to its size).
    """
    from .ros_conversions import intrinsics_from_camera_info

    if frame.depth is None or frame.color_info is None or len(masks) == 0:
        return []
    depth = depth_to_metres(frame.depth)
    color_k = intrinsics_from_camera_info(frame.color_info)
    h, w = masks.shape[1:]
    if (color_k.width, color_k.height) != (w, h):
        color_k = color_k.scaled_to(w, h)
    if frame.depth_info is not None:
        depth_k = intrinsics_from_camera_info(frame.depth_info)
    else:
        depth_k = color_k.scaled_to(depth.shape[1], depth.shape[0])
    return targets_3d(masks, depth, depth_k, color_k, trim_percentile=settings.outlier_percentile,
                      depth_min=settings.depth_min, depth_max=settings.depth_max, depth_gap=settings.depth_gap)


def _is_oom(e: Exception) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
            self.overlay.publish(rgb_to_image(draw_overlay(a.image, a.masks, a.text), a.header))
        if a.targets:
            if self.points is not None:
                labels = np.concatenate([np.full(len(p), i, np.uint32) for i, p in enumerate(a.points)])
                colours = PALETTE[labels % len(PALETTE)]
                self.points.publish(points_to_cloud(np.vstack(a.points), a.header, rgb=colours, labels=labels))
            if self.markers is not None:
                self.markers.publish(target_markers(a.targets, a.header,
                                                    [f"{i}: {a.text[:40]}" for i in range(len(a.targets))]))

    def destroy(self) -> None:
        """Publish what is queued, stop the worker, destroy the publishers."""
        self._pending.put(None)
        self._worker.join()
        for pub in (self.result, self.mask, self.overlay, self.answer, self.points, self.markers):
            if pub is not None:
                self.node.destroy_publisher(pub)
