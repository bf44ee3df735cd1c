"""lisa_node: LISA reasoning segmentation as a managed ROS 2 node.

    ros2 run lisa_ros lisa_node --ros-args -p model:=xinlai/LISA-7B-v1 -p device:=cuda -p dtype:=bfloat16
    python -m lisa_ros.node --ros-args -p model:=tiny-random        # where there is no `ros2` command

Lifecycle: configure -> subscriptions, publishers, the ~/reason_segment service and action; activate -> the
model is loaded (after a memory check) and warmed up; deactivate -> the running inference is stopped and the model
freed (CUDA memory released); cleanup -> everything is torn down. /diagnostics reports from construction on.
Inference runs in its own callback group on a multi-threaded executor, so frames, parameters and lifecycle
services keep being served during a long inference; every model layer checks whether the request was cancelled,
ran out of time, or the node is deactivating or shutting down (SIGINT / SIGTERM), so none of them waits long.
"""
from __future__ import annotations

import sys
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from lisa_ros.srv import ReasonSegment

from .action_server import ReasonSegmentActionServer
from .answering import WAITING, Answer, Request, answer_request
from .diagnostics import NodeStatus, build_diagnostics
from .executor import QueueAwareExecutor
from .frames import FrameStore
from .outputs import OutputPublishers
from .parameters import NodeSettings, declare_all, default_settings, read_all
from .prefetch import Prefetcher
from .request_queue import Abandoned, Busy, RequestQueue


class LisaNode(LifecycleNode):
    def __init__(self, node_name: str = "lisa_node", **kwargs):
        super().__init__(node_name, **kwargs)
        declare_all(self)
        self.status = NodeStatus()
        try:
            self.settings: NodeSettings = read_all(self)
        except ValueError as e:  # configure says so (log and diagnostics); until then the defaults stand
            self.settings = default_settings()
            self.status.last_error = f"bad parameter: {e}"
        self.segmenter = None
        self.frames = FrameStore(self.settings.sync_tolerance)
        self.queue = RequestQueue(self.settings.queue_size, self.settings.queue_policy)
        self.intake_group = ReentrantCallbackGroup()  # frames: never blocked by inference
        self.request_group = ReentrantCallbackGroup()  # service calls wait in the RequestQueue, not the executor
        self.continuous_group = MutuallyExclusiveCallbackGroup()
        self.prefetch_group = MutuallyExclusiveCallbackGroup()
        self._standing_instruction = ""
        self._last_continuous_sequence = -1
        self._entities: list = []
        self.outputs: OutputPublishers | None = None
        self._action: ReasonSegmentActionServer | None = None
        self._mode_timers: list = []
        self.prefetcher = Prefetcher(self)
        self.stop_reason: str | None = None  # set: every running or waiting inference stops with this reason
        self.context.on_shutdown(self._on_context_shutdown)
        # Diagnostics from construction on, so a node that fails to configure or activate still says why.
        self._diagnostics = None
        if self.settings.diagnostics_period > 0:
            publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            timer = self.create_timer(self.settings.diagnostics_period, self._publish_diagnostics,
                                      callback_group=self.intake_group)
            self._diagnostics = (publisher, timer)
        if self.settings.autostart:
            # Transitions from the constructor are allowed: nothing spins yet, and the model loads synchronously.
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    # ----- lifecycle --------------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.settings = read_all(self)
        except ValueError as e:
            self.status.last_error = f"configure failed, bad parameter: {e}"
            self.get_logger().error(self.status.last_error)
            return TransitionCallbackReturn.FAILURE
        s = self.settings
        self.frames = FrameStore(s.sync_tolerance)
        self.queue = RequestQueue(s.queue_size, s.queue_policy)
        # Reliable inputs keep sensor data's history depth (5): with depth 1, a burst of depth frames would leave
        # only the last one for pairing by stamp.
        qos = qos_profile_sensor_data if s.input_reliability == "best_effort" else QoSProfile(
            depth=qos_profile_sensor_data.depth, reliability=ReliabilityPolicy.RELIABLE,
            history=HistoryPolicy.KEEP_LAST)
        g = self.intake_group
        if s.use_compressed:
            self._sub(CompressedImage, s.color_topic.rstrip("/") + "/compressed", self.frames.put_color, qos, g)
        else:
            self._sub(Image, s.color_topic, self.frames.put_color, qos, g)
        if s.depth_topic:
            self._sub(Image, s.depth_topic, self.frames.put_depth, qos, g)
        if s.camera_info_topic:
            self._sub(CameraInfo, s.camera_info_topic, self.frames.put_color_info, qos, g)
        if s.depth_camera_info_topic:
            self._sub(CameraInfo, s.depth_camera_info_topic, self.frames.put_depth_info, qos, g)
        self._sub(String, s.instruction_topic, self._on_instruction, 10, g)
        self.outputs = OutputPublishers(self, s)
        self._entities.append(self.create_service(ReasonSegment, "~/reason_segment", self._on_request,
                                                  callback_group=self.request_group))
        self._action = ReasonSegmentActionServer(self, self.request_group)
        if s.continuous_rate > 0:
            self._mode_timers.append(self.create_timer(1.0 / s.continuous_rate, self._on_continuous_tick,
                                                       callback_group=self.continuous_group))
        if s.prefetch:
            self._mode_timers.append(self.create_timer(1.0 / s.prefetch_rate, self.prefetcher.tick,
                                                       callback_group=self.prefetch_group))
        self.get_logger().info("configured")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        from lisa_model import LisaSegmenter  # heavy import, only when a model is wanted

        s = self.settings
        self.stop_reason = None
        t0 = time.perf_counter()
        try:
            segmenter = LisaSegmenter.from_pretrained(
                s.model, vision_tower=s.vision_tower or None, device=s.device, dtype=s.dtype,
                conv_template=s.conv_template or None, load_in_8bit=s.load_in_8bit, load_in_4bit=s.load_in_4bit,
                check_memory=s.memory_limit_mb >= 0,
                memory_limit_bytes=s.memory_limit_mb * 2**20 if s.memory_limit_mb > 0 else None,
                family=s.family or None, base_model=s.base_model or None)
            loaded = time.perf_counter() - t0
            self.status.warmup_s = segmenter.warm_up() if s.warmup else 0.0
        except Exception as e:  # noqa: BLE001 - a bad checkpoint must not kill the node
            self.status.last_error = f"cannot load model {s.model!r}: {e}"
            self.get_logger().error(self.status.last_error)
            return TransitionCallbackReturn.FAILURE
        self.segmenter = segmenter
        self.status.last_error = ""
        self.get_logger().info(f"model {s.model!r} ({segmenter.model.family.name}) loaded on {s.device} "
                               f"({s.dtype}) in {loaded:.1f} s"
                               + (f", warmed up in {self.status.warmup_s:.1f} s" if s.warmup else ""))
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_model("node deactivating")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_model("node cleaning up")
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_model("node shutting down")
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def stop_inference(self, reason: str) -> None:
        """Make the running inference and every waiting request end now (within one model layer)."""
        self.stop_reason = reason

    def _on_context_shutdown(self) -> None:  # SIGINT / SIGTERM shut the context down before spin returns
        self.stop_inference("node shutting down")

    def _release_model(self, reason: str) -> None:
        self.stop_inference(reason)
        with self.queue.turn(bounded=False):  # the running inference stops at its next layer; then free the model
            if self.segmenter is not None:
                self.segmenter.release()
                self.segmenter = None
                self.get_logger().info("model released")

    def _teardown(self) -> None:
        for timer in self._mode_timers:
            self.destroy_timer(timer)
        self._mode_timers.clear()
        if self._action is not None:
            self._action.destroy()
            self._action = None
        for entity in self._entities:
            if hasattr(entity, "srv_type"):
                self.destroy_service(entity)
            else:
                self.destroy_subscription(entity)
        self._entities.clear()
        if self.outputs is not None:
            self.outputs.destroy()
            self.outputs = None
        self.frames.clear()

    def _sub(self, msg_type, topic, callback, qos, group) -> None:
        self._entities.append(self.create_subscription(msg_type, topic, callback, qos, callback_group=group))

    # ----- requests ---------------------------------------------------------------------------------------------
    def request_from(self, msg) -> Request:
        """A ReasonSegment service request or action goal (same fields) -> Request on the frame it names."""
        frame = self.frames.for_image(msg.image) if len(msg.image.data) else self.frames.latest()
        if frame is not None:  # optional depth / intrinsics sent with the request win over stored ones
            if len(msg.depth.data):
                frame.depth = msg.depth
            if msg.camera_info.width:
                frame.color_info = msg.camera_info
            if msg.depth_camera_info.width:
                frame.depth_info = msg.depth_camera_info
        return Request(msg.instruction, frame, int(msg.max_new_tokens), bool(msg.explain))

    def _on_request(self, request: ReasonSegment.Request, response: ReasonSegment.Response):
        self.run(self.request_from(request)).fill_response(response)
        return response

    def run(self, req: Request, cancelled=lambda: None, progress=None, wait: bool = True) -> Answer:
        """Queue, run, count and publish one request (service, action goal or continuous tick); never raises.

        cancelled() -> a reason when the caller gave up; progress(stage, ids) gets the model's progress."""
        sequence = req.frame.sequence if req.frame is not None else -1
        self.prefetcher.want(sequence)  # a request always wins over prefetch
        feedback = progress or (lambda stage, ids: None)

        def abandon():
            feedback(WAITING, [])
            return cancelled() or self.stop_reason

        try:
            with self.queue.turn(wait=wait, abandon=abandon, ticket=progress):
                self.prefetcher.unwant(sequence)
                sequence = None
                answer = self._answer(req, cancelled, progress)
        except (Busy, Abandoned) as e:
            answer = Answer.failure(str(e), req.instruction)
        finally:
            if sequence is not None:
                self.prefetcher.unwant(sequence)
        self.status.count(answer.success, answer.inference_time)
        if answer.success and self.outputs is not None:
            self.outputs.publish(answer)
        elif not answer.success and self.context.ok():
            self.get_logger().warning(f"request failed: {answer.message}")
        return answer

    def _answer(self, req: Request, cancelled, progress) -> Answer:
        """One inference, holding the model; stops on cancel, node stop or the time budget."""
        segmenter = self.segmenter
        if segmenter is None:
            return Answer.failure("model not active (lifecycle state is not active)", req.instruction)
        budget = self.settings.max_inference_seconds
        deadline = time.monotonic() + budget if budget > 0 else float("inf")

        def should_stop() -> str | None:
            if time.monotonic() > deadline:
                return f"time budget of {budget:g} s exceeded (parameter max_inference_seconds)"
            return cancelled() or self.stop_reason

        answer = answer_request(segmenter, self.settings, req, should_stop, progress)
        answer.family, answer.checkpoint = segmenter.model.family.name, self.settings.model
        return answer

    def _publish_diagnostics(self) -> None:
        if self._diagnostics is not None:
            self._diagnostics[0].publish(build_diagnostics(self, self.status, stale_after=2.0))

    # ----- continuous mode --------------------------------------------------------------------------------------
    def _on_instruction(self, msg: String) -> None:
        self._standing_instruction = msg.data.strip()
        self.get_logger().info(f"standing instruction: {self._standing_instruction!r}" if self._standing_instruction
                               else "standing instruction cleared")

    def _on_continuous_tick(self) -> None:
        instruction = self._standing_instruction
        frame = self.frames.latest()
        if not instruction or frame is None or frame.sequence == self._last_continuous_sequence:
            return
        if self.queue.pending:  # service requests come first; skip this tick when busy
            return
        self._last_continuous_sequence = frame.sequence
        self.run(Request(instruction, frame), wait=False)

    def destroy_node(self) -> None:
        self.stop_inference("node shutting down")
        deadline = time.monotonic() + 5.0  # the running inference ends at its next layer
        while self.queue.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.outputs is not None:  # its worker may be publishing: stop it before the publishers go
            self.outputs.destroy()
            self.outputs = None
        if self._diagnostics is not None:
            self.destroy_timer(self._diagnostics[1])
            self.destroy_publisher(self._diagnostics[0])
            self._diagnostics = None
        super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    try:
        node = LisaNode()
        # Threads: intake + the running and every queued request (service or action) + a refused one + continuous
        # mode + prefetch + lifecycle/parameter services.
        executor = QueueAwareExecutor(num_threads=node.settings.queue_size + 6)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:  # SIGINT / SIGTERM: a running inference stops at its next layer, then we leave
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
