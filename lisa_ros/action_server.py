"""The ~/reason_segment action: the service's question with progress feedback and a prompt cancel.

Goals run through the node's `run` exactly as service requests do (same queue, same bounds, same "busy"); this
module only turns a goal into a Request, the model's progress into throttled feedback, and the Answer into the
result and the goal's final status.
"""
from __future__ import annotations

import time

from rclpy.action import ActionServer, CancelResponse, GoalResponse

from lisa_ros.action import ReasonSegment

from .answering import GENERATING, WAITING


class FeedbackPublisher:
    """Publishes a goal's progress: on every change of stage, and at most every `period` seconds within one."""

    def __init__(self, goal_handle, node, period: float = 0.1):
        self.goal_handle, self.node, self.period = goal_handle, node, period
        self.started = time.monotonic()
        self._stage, self._last, self._generation_start = "", 0.0, None
        self._held: tuple[str, list[int], float] | None = None  # what the throttle kept back, and when

    def __call__(self, stage: str, ids: list[int]) -> None:
        now = time.monotonic()
        if stage == GENERATING and self._generation_start is None:
            self._generation_start = now
        if stage == self._stage and now - self._last < self.period:
            self._held = (stage, list(ids), now)
            return
        if stage != self._stage and self._held is not None:
            self._publish(*self._held)  # the last state of a stage is never lost to the throttle
        self._stage, self._last, self._held = stage, now, None
        self._publish(stage, ids, now)

    def flush(self) -> None:
        """Publish what the throttle kept back: a fast answer's final token count and rate. Best effort: a goal
        that ends because the node deactivates or stops may have no feedback channel left, and its result matters
        more than a last progress line."""
        held, self._held = self._held, None
        if held is not None:
            try:
                self._publish(*held)
            except Exception as e:  # noqa: BLE001
                self.node.get_logger().debug(f"last feedback not sent: {e}")

    def _publish(self, stage: str, ids: list[int], now: float) -> None:
        fb = ReasonSegment.Feedback(stage=stage, generated_tokens=len(ids), elapsed=now - self.started)
        if stage == WAITING:
            fb.queue_position = self.node.queue.position(self)
        segmenter = self.node.segmenter
        if ids and segmenter is not None:
            fb.text = segmenter.plain_text(segmenter.decode(ids)[0])
            if self._generation_start is not None and now > self._generation_start:
                fb.tokens_per_second = len(ids) / (now - self._generation_start)
        try:
            self.goal_handle.publish_feedback(fb)
        except Exception:  # noqa: BLE001 - the node is shutting down under us (SIGINT): nobody listens any more
            if self.node.context.ok():
                raise


class ReasonSegmentActionServer:
    def __init__(self, node, callback_group):
        self.node = node
        self._server = ActionServer(node, ReasonSegment, "~/reason_segment", execute_callback=self._execute,
                                    goal_callback=lambda goal: GoalResponse.ACCEPT,
                                    cancel_callback=lambda goal_handle: CancelResponse.ACCEPT,
                                    callback_group=callback_group)

    def _execute(self, goal_handle) -> ReasonSegment.Result:
        feedback = FeedbackPublisher(goal_handle, self.node)
        answer = self.node.run(self.node.request_from(goal_handle.request),
                               cancelled=lambda: "cancelled by the client" if goal_handle.is_cancel_requested
                               else None, progress=feedback)
        result = ReasonSegment.Result()
        answer.fill_response(result)
        if not self.node.context.ok():  # SIGINT / SIGTERM: nobody is left to tell the goal's status to
            return result
        if goal_handle.is_active:
            feedback.flush()
        if goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif answer.success:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return result

    def destroy(self) -> None:
        self._server.destroy()
