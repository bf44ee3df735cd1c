"""The node's health on /diagnostics (diagnostic_msgs/DiagnosticArray), the topic robot monitors and rqt read.

One DiagnosticStatus per node: whether the model is loaded (or why it is not), how fast colour frames arrive, how
old the newest one is, how many requests were answered / refused, how long the last inference and the warm-up
took, and how many frames prefetch encoded. Published from the
intake callback group, so it keeps coming while an inference runs (a stalled counter there means stalled intake).
"""
from __future__ import annotations

import threading
import time
from collections import deque

from .frames import stamp_seconds


class NodeStatus:
    """Counters the node updates and the diagnostics timer reads (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.answered = 0  # requests and continuous-mode answers that succeeded
        self.failed = 0  # answered with success=false (bad input, busy, model inactive, ...)
        self.last_inference_s = 0.0
        self.warmup_s = 0.0  # the last activation's warm-up
        self.last_error = ""  # why the last configure / activate failed (empty once the model is loaded)
        self._samples: deque[tuple[float, int]] = deque()  # (monotonic time, frames received) at recent reports

    def count(self, success: bool, inference_s: float) -> None:
        with self._lock:
            if success:
                self.answered += 1
                self.last_inference_s = inference_s
            else:
                self.failed += 1

    RATE_WINDOW_S = 5.0  # like `ros2 topic hz`'s window: DDS and the executor hand frames over in bursts

    def frame_rate(self, received: int) -> float:
        """Colour frames per second over the last RATE_WINDOW_S seconds of reports (0.0 on the first call)."""
        now = time.monotonic()
        with self._lock:
            self._samples.append((now, received))
            while len(self._samples) > 2 and now - self._samples[1][0] >= self.RATE_WINDOW_S:
                self._samples.popleft()  # the oldest sample kept is the newest one at least a window old
            start, first = self._samples[0]
        return (received - first) / (now - start) if now > start else 0.0


def build_diagnostics(node, status: NodeStatus, stale_after: float):
    """A DiagnosticArray describing `node` (a LisaNode) now. Level: OK; WARN when no model is loaded or the newest
    colour frame is older than `stale_after` seconds (or none came yet)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    s = node.settings
    latest = node.frames.latest()
    now = node.get_clock().now().nanoseconds * 1e-9
    age = now - stamp_seconds(latest.color.header) if latest is not None else float("inf")
    rate = status.frame_rate(node.frames.received)
    problems = []
    model = getattr(node.segmenter, "model", None)  # read once: a deactivate may release it meanwhile
    family = model.family.name if model is not None else ""
    if node.segmenter is None:
        problems.append("model not loaded (lifecycle state is not active)")
    if status.last_error:
        problems.append(status.last_error)
    if latest is None:
        problems.append(f"no frame received yet on {s.color_topic}")
    elif age > stale_after:
        problems.append(f"newest frame is {age:.1f} s old")
    values = {
        "model": s.model, "device": s.device, "dtype": s.dtype,
        "family": family,
        "model_loaded": str(node.segmenter is not None),
        "color_frames_received": str(node.frames.received),
        "color_rate_hz": f"{rate:.2f}",
        "newest_frame_age_s": f"{age:.3f}",
        "requests_answered": str(status.answered),
        "requests_failed": str(status.failed),
        "requests_pending": str(node.queue.pending),
        "last_inference_s": f"{status.last_inference_s:.3f}",
        "warmup_s": f"{status.warmup_s:.3f}",
        "prefetch": str(s.prefetch),
        "frames_prefetched": str(node.prefetcher.encoded),
        "prefetches_abandoned": str(node.prefetcher.abandoned),
        "last_error": status.last_error,
    }
    entry = DiagnosticStatus(
        level=DiagnosticStatus.WARN if problems else DiagnosticStatus.OK,
        name=f"{node.get_fully_qualified_name()}: reasoning segmentation",
        message="; ".join(problems) or "ok", hardware_id=s.device,
        values=[KeyValue(key=k, value=v) for k, v in values.items()])
    msg = DiagnosticArray(status=[entry])
    msg.header.stamp = node.get_clock().now().to_msg()
    return msg
