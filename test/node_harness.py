"""A lisa_node in its own process and a test-side rclpy peer, talking over real DDS on a private domain."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from ros_fixtures import ROOT, claim_domain, subprocess_env


class NodeProcess:
    """`python -m lisa_ros.node --ros-args -p k:=v ...` with its output in a log file; `env`: extra variables."""

    def __init__(self, domain: int, log: Path, env: dict[str, str] | None = None, **params):
        self.domain, self.log_path, self.params, self.env = domain, log, params, env or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "NodeProcess":
        args = [sys.executable, "-m", "lisa_ros.node", "--ros-args"]
        for k, v in self.params.items():
            value = str(v).lower() if isinstance(v, bool) else str(v)
            args += ["-p", f"{k}:={value}"]
        env = subprocess_env(ROS_DOMAIN_ID=str(self.domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                             OMP_NUM_THREADS="1", **self.env)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Peer:
    """The test's side of DDS: publishers, subscribers and service clients on one node with its own executor."""

    def __init__(self, domain: int, name: str = "test_peer"):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.inbox: dict[str, list] = {}
        self._clients: dict[tuple, object] = {}

    def subscribe(self, msg_type, topic: str, qos=10) -> list:
        """Every message on `topic` from now on, in arrival order (one subscription per topic)."""
        if topic not in self.inbox:
            self.inbox[topic] = []
            self.node.create_subscription(msg_type, topic, self.inbox[topic].append, qos)
        return self.inbox[topic]

    def spin_until(self, condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return condition()

    def deliver_frame(self, publisher, frame, timeout: float = 20.0) -> None:
        """Publish `frame` until the node's /diagnostics count a colour frame more than before. One publish right
        after the publisher matched can be lost: the node's side of the connection may not be up yet."""
        from diagnostic_msgs.msg import DiagnosticArray

        reports = self.subscribe(DiagnosticArray, "/diagnostics")
        if not self.spin_until(lambda: reports, 10):
            raise TimeoutError("no /diagnostics report from the node")

        def received() -> int:
            return int(next(kv.value for kv in reports[-1].status[0].values if kv.key == "color_frames_received"))

        before = received()

        def taken() -> bool:
            publisher.publish(frame)
            return received() > before

        if not self.spin_until(taken, timeout):
            raise TimeoutError(f"the node took no colour frame in {timeout} s")

    def call(self, srv_type, name: str, request, timeout: float = 120.0):
        """One call from a client kept per service (discovered once, so later calls time only the call)."""
        client = self._clients.get((srv_type, name))
        if client is None:
            client = self._clients[(srv_type, name)] = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"{name} not available")
        future = client.call_async(request)
        if not self.spin_until(future.done, timeout):
            raise TimeoutError(f"no response from {name} within {timeout} s")
        return future.result()

    def call_many(self, srv_type, name: str, requests: list, timeout: float = 120.0) -> list:
        """Send all requests at once (each from its own client) and wait for every response."""
        clients = [self.node.create_client(srv_type, name) for _ in requests]
        for c in clients:
            if not c.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"{name} not available")
        futures = [c.call_async(r) for c, r in zip(clients, requests)]
        if not self.spin_until(lambda: all(f.done() for f in futures), timeout):
            raise TimeoutError(f"no response from {name} within {timeout} s")
        return [f.result() for f in futures]

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


def solid_image(h: int, w: int, stamp_sec: int = 1, frame_id: str = "camera_color_optical_frame"):
    """An rgb8 Image of a fixed random-looking pattern (deterministic), stamped `stamp_sec`."""
    from lisa_ros.image_conversion import rgb_to_image
    from std_msgs.msg import Header

    rng = np.random.default_rng(h * 1000 + w)
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    header = Header(frame_id=frame_id)
    header.stamp.sec = stamp_sec
    return rgb, rgb_to_image(rgb, header)


# Module fixtures for a test module that starts one node process (it defines the `node` fixture), imported there:
#     from node_harness import domain, peer  # noqa: F401  (fixtures)
@pytest.fixture(scope="module")
def domain():
    d, fd = claim_domain()
    yield d
    os.close(fd)


@pytest.fixture(scope="module")
def peer(domain, node):
    p = Peer(domain)
    yield p
    p.close()
