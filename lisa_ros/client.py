"""Ask a running lisa_node one question and save what it saw (the demo's and a user's quick check).

    python -m lisa_ros.client "where would I put the clothes" --out out/demo [--node /lisa_node] [--action]

Calls <node>/reason_segment on the latest camera frame, saves the overlay published for that answer, one PNG
per mask and a JSON (answer, areas, 3D targets), and prints the answer. Exit code 0 only when success=true.
--action uses the ReasonSegment action instead of the service: a live progress line (stage, text so far,
tokens/s) on stderr, and Ctrl-C cancels the goal (the node stops at once and answers with the partial text).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import rclpy
from rclpy.action import ActionClient
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image

from lisa_ros.action import ReasonSegment as ReasonSegmentAction
from lisa_ros.srv import ReasonSegment

from .image_conversion import image_to_rgb


def progress_line(fb) -> None:
    """One status line, rewritten in place: stage, tokens, rate, the end of the text so far."""
    rate = f" {fb.tokens_per_second:.1f} tok/s" if fb.tokens_per_second else ""
    where = f" ({fb.queue_position} ahead)" if fb.stage == "waiting" else ""
    line = f"[{fb.elapsed:6.1f} s] {fb.stage}{where} {fb.generated_tokens} tokens{rate} | {fb.text[-60:]}"
    print("\r" + line.ljust(110)[:110], end="", file=sys.stderr, flush=True)


def target_summary(t) -> dict:
    return {"valid": bool(t.valid), "centroid_m": [t.centroid.x, t.centroid.y, t.centroid.z],
            "bbox_center_m": [t.bbox_center.x, t.bbox_center.y, t.bbox_center.z],
            "bbox_size_m": [t.bbox_size.x, t.bbox_size.y, t.bbox_size.z], "point_count": int(t.point_count)}


class OneShotClient(Node):
    def __init__(self, node: str, use_action: bool = False):
        super().__init__("lisa_client")
        name = self.target = f"{node}/reason_segment"
        self.action = ActionClient(self, ReasonSegmentAction, name) if use_action else None
        self.client = None if use_action else self.create_client(ReasonSegment, name)
        self.overlays: list[Image] = []
        self.create_subscription(Image, f"{node}/overlay", self.overlays.append, 10)

    def ask(self, instruction: str, timeout: float, max_new_tokens: int, explain: bool, wait_for_3d: bool = False):
        ready = (self.action.wait_for_server(timeout_sec=timeout) if self.action is not None
                 else self.client.wait_for_service(timeout_sec=timeout))
        if not ready:
            raise TimeoutError(f"{'action' if self.action else 'service'} {self.target} not available after "
                               f"{timeout} s")
        fields = dict(instruction=instruction, max_new_tokens=max_new_tokens, explain=explain)
        deadline = time.monotonic() + timeout
        while True:
            res = self._ask_action(ReasonSegmentAction.Goal(**fields), deadline) if self.action is not None \
                else self._call(ReasonSegment.Request(**fields), deadline)
            # A camera that started together with the node may not have delivered its first frame yet: ask again.
            # With wait_for_3d, also while masks come without 3D: a depth stream can start after the colour one.
            waiting = res.message.startswith("no frame received yet") or (
                wait_for_3d and res.success and len(res.masks) and not any(t.valid for t in res.targets))
            if not waiting or time.monotonic() > deadline:
                return res
            rclpy.spin_once(self, timeout_sec=0.5)

    def _call(self, req, deadline: float):
        future = self.client.call_async(req)
        rclpy.spin_until_future_complete(self, future, timeout_sec=max(0.0, deadline - time.monotonic()))
        if not future.done():
            raise TimeoutError(f"no answer from {self.target} in time")
        return future.result()

    def _ask_action(self, goal, deadline: float):
        """Send the goal, print its feedback as one live line, cancel it on Ctrl-C or timeout; the result's
        fields. Ctrl-C may come at any point, even before the goal is accepted."""
        sent = self.action.send_goal_async(goal, feedback_callback=lambda m: progress_line(m.feedback))
        handle = result = None
        try:
            while result is None or not result.done():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer from {self.target} in time")
                rclpy.spin_once(self, timeout_sec=0.1)
                if handle is None and sent.done():
                    handle = sent.result()
                    if not handle.accepted:
                        raise TimeoutError(f"{self.target} rejected the goal")
                    result = handle.get_result_async()
        except (KeyboardInterrupt, TimeoutError) as e:
            print(f"\ncancelling ({'Ctrl-C' if isinstance(e, KeyboardInterrupt) else e}) ...", file=sys.stderr)
            if handle is None:
                rclpy.spin_until_future_complete(self, sent, timeout_sec=5.0)
                if not sent.done() or not sent.result().accepted:
                    raise TimeoutError("the goal was never accepted") from None
                handle, result = sent.result(), sent.result().get_result_async()
            rclpy.spin_until_future_complete(self, handle.cancel_goal_async(), timeout_sec=5.0)
            rclpy.spin_until_future_complete(self, result, timeout_sec=10.0)
            if not result.done():
                raise TimeoutError("the node did not end the cancelled goal") from None
        for _ in range(3):  # the last feedback is published just before the result and may arrive just after it
            rclpy.spin_once(self, timeout_sec=0.02)
        print(file=sys.stderr)
        return result.result().result

    def overlay_for(self, stamp, wait: float = 3.0) -> Image | None:
        """The overlay published for the frame stamped `stamp` (None: the newest overlay), waiting up to `wait`."""
        deadline = time.monotonic() + wait
        while True:
            matches = [m for m in self.overlays if stamp is None or m.header.stamp == stamp]
            if matches:
                return matches[-1]
            if time.monotonic() > deadline:
                return None
            rclpy.spin_once(self, timeout_sec=0.1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("instruction")
    p.add_argument("--node", default="/lisa_node")
    p.add_argument("--out", default="lisa_output")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--max-new-tokens", type=int, default=0)
    p.add_argument("--explain", action="store_true")
    p.add_argument("--action", action="store_true", help="use the action: live progress, Ctrl-C cancels")
    p.add_argument("--wait-for-3d", action="store_true", help="ask again (until --timeout) while the answer's masks "
                                                              "have no 3D target yet (depth not streaming yet)")
    args = p.parse_args(argv)
    # Ctrl-C must reach us as KeyboardInterrupt, with the context still up, so that the goal can be cancelled.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    client = OneShotClient(args.node, args.action)
    try:
        res = client.ask(args.instruction, args.timeout, args.max_new_tokens, args.explain, args.wait_for_3d)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        summary = {"instruction": args.instruction, "success": res.success, "message": res.message,
                   "text": res.text, "mask_areas": list(res.mask_areas), "mask_scores": list(res.mask_scores),
                   "targets": [target_summary(t) for t in res.targets], "inference_time_s": res.inference_time,
                   "generated_tokens": res.generated_tokens, "image_encoding_time_s": res.image_encoding_time,
                   "mask_labels": list(res.mask_labels), "rejected": res.rejected,
                   "rejected_labels": list(res.rejected_labels), "model_family": res.model_family,
                   "model_checkpoint": res.model_checkpoint}
        for i, m in enumerate(res.masks):
            cv2.imwrite(str(out / f"mask_{i}.png"), image_to_rgb(m)[..., 0])
        overlay = client.overlay_for(res.masks[0].header.stamp if len(res.masks) else None) if res.success \
            else None
        if overlay is not None:
            cv2.imwrite(str(out / "overlay.png"), cv2.cvtColor(image_to_rgb(overlay), cv2.COLOR_RGB2BGR))
            summary["overlay"] = str(out / "overlay.png")
        (out / "answer.json").write_text(json.dumps(summary, indent=2))
    except TimeoutError as e:
        print(f"lisa client: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a service call cannot be cancelled: the node still answers it, to nobody
        print("lisa client: interrupted", file=sys.stderr)
        return 130
    finally:
        client.destroy_node()
        rclpy.try_shutdown()
    print(f"answer: {res.text}" if res.success else f"failed: {res.message}")
    if res.success and res.rejected:
        print(f"not in the image: {len(res.rejected_labels)} target(s) "
              + ", ".join(f"'{label}'" for label in res.rejected_labels if label))
    if res.success:
        print(f"masks: {len(res.masks)} areas {list(res.mask_areas)}; 3D: "
              + ", ".join(f"({t.centroid.x:.2f}, {t.centroid.y:.2f}, {t.centroid.z:.2f}) m" for t in res.targets
                          if t.valid) + f" -> {out}/")
    return 0 if res.success else 1


if __name__ == "__main__":
    sys.exit(main())
