"""lisa_node: LISA reasoning segmentation as a managed ROS 2 node.

    ros2 run lisa_ros lisa_node --ros-args -p model:=xinlai/LISA-7B-v1 -p device:=cuda -p dtype:=bfloat16
    python -m lisa_ros.node --ros-args -p model:=tiny-random        # where there is no `ros2` command

Lifecycle: configure -> subscriptions, publishers, the ~/reason_segment service; activate -> the model is
loaded; deactivate -> the model is freed (CUDA memory released); cleanup -> everything is torn down.
Inference runs in its own callback group on a multi-threaded executor, so frames, parameters and lifecycle
services keep being served during a long inference.
"""
from __future__ import annotations

import sys
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from lisa_ros.srv import ReasonSegment

from .diagnostics import NodeStatus, build_diagnostics
from .frames import FrameStore
from .outputs import Answer, OutputPublishers, answer_frame
from .parameters import NodeSettings, declare_all, read_all
from .request_queue import Busy, RequestQueue


class LisaNode(LifecycleNode):
    def __init__(self, node_name: str = "lisa_node", **kwargs):
        super().__init__(node_name, **kwargs)
        declare_all(self)
        self.settings: NodeSettings = read_all(self)
        self.segmenter = None
        self.frames = FrameStore(self.settings.sync_tolerance)
        self.queue = RequestQueue(self.settings.queue_size, self.settings.queue_policy)
        self.intake_group = ReentrantCallbackGroup()  # frames: never blocked by inference
        self.request_group = ReentrantCallbackGroup()  # service calls wait in the RequestQueue, not the executor
        self.continuous_group = MutuallyExclusiveCallbackGroup()
        self._standing_instruction = ""
        self._last_continuous_sequence = -1
        self._entities: list = []
        self.outputs: OutputPublishers | None = None
        self._timer = None
        self.status = NodeStatus()
        self._diagnostics = None  # (publisher, timer) while configured
        if self.settings.autostart:
            # Transitions from the constructor are allowed: nothing spins yet, and the model loads synchronously.
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    # ----- lifecycle --------------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.settings = read_all(self)
        except ValueError as e:
            self.get_logger().error(f"bad parameter: {e}")
            return TransitionCallbackReturn.FAILURE
        s = self.settings
        self.frames = FrameStore(s.sync_tolerance)
        self.queue = RequestQueue(s.queue_size, s.queue_policy)
        qos = qos_profile_sensor_data if s.input_reliability == "best_effort" else QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
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
        if s.continuous_rate > 0:
            self._timer = self.create_timer(1.0 / s.continuous_rate, self._on_continuous_tick,
                                            callback_group=self.continuous_group)
        if s.diagnostics_period > 0:
            publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            timer = self.create_timer(s.diagnostics_period, self._publish_diagnostics, callback_group=g)
            self._diagnostics = (publisher, timer)
        self.get_logger().info("configured")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        from lisa_model import LisaSegmenter  # heavy import, only when a model is wanted

        s = self.settings
        t0 = time.perf_counter()
        try:
            self.segmenter = LisaSegmenter.from_pretrained(
                s.model, vision_tower=s.vision_tower or None, device=s.device, dtype=s.dtype,
                conv_template=s.conv_template or None, load_in_8bit=s.load_in_8bit, load_in_4bit=s.load_in_4bit)
        except Exception as e:  # noqa: BLE001 - a bad checkpoint must not kill the node
            self.get_logger().error(f"cannot load model {s.model!r}: {e}")
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"model {s.model!r} loaded on {s.device} ({s.dtype}) in {time.perf_counter() - t0:.1f} s")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_model()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_model()
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_model()
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _release_model(self) -> None:
        with self.queue.turn(bounded=False):  # wait for a running inference to finish before freeing its model
            if self.segmenter is not None:
                self.segmenter.release()
                self.segmenter = None
                self.get_logger().info("model released")

    def _teardown(self) -> None:
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if self._diagnostics is not None:
            publisher, timer = self._diagnostics
            self.destroy_timer(timer)
            self.destroy_publisher(publisher)
            self._diagnostics = None
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
    def _on_request(self, request: ReasonSegment.Request, response: ReasonSegment.Response):
        frame = self.frames.for_image(request.image) if len(request.image.data) else self.frames.latest()
        if frame is not None:  # optional depth / intrinsics sent with the request win over stored ones
            if len(request.depth.data):
                frame.depth = request.depth
            if request.camera_info.width:
                frame.color_info = request.camera_info
            if request.depth_camera_info.width:
                frame.depth_info = request.depth_camera_info
        try:
            with self.queue.turn():
                answer = self._answer(request.instruction, frame, request.max_new_tokens, request.explain)
        except Busy as e:
            answer = Answer.failure(str(e))
            self.status.count(False, 0.0)
        answer.fill_response(response)
        return response

    def _answer(self, instruction: str, frame, max_new_tokens: int, explain: bool) -> Answer:
        """One inference on `frame`; every failure becomes success=false with a message."""
        if self.segmenter is None:
            answer = Answer.failure("model not active (lifecycle state is not active)")
        else:
            answer = answer_frame(self.segmenter, self.settings, instruction, frame,
                                  max_new_tokens or self.settings.max_new_tokens, explain)
        self.status.count(answer.success, answer.inference_time)
        if answer.success and self.outputs is not None:
            self.outputs.publish(answer)
        elif not answer.success:
            self.get_logger().warning(f"request failed: {answer.message}")
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
        try:
            with self.queue.turn(wait=False):  # service requests come first; skip this tick when busy
                self._last_continuous_sequence = frame.sequence
                self._answer(instruction, frame, self.settings.max_new_tokens, False)
        except Busy:
            pass


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    try:
        node = LisaNode()
        # Threads: intake + every queued request + continuous mode + lifecycle/parameter services.
        executor = MultiThreadedExecutor(num_threads=node.settings.queue_size + 4)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
