"""QueueAwareExecutor, the node's executor: it takes a camera stream whole where rclpy's MultiThreadedExecutor
dropped most of it, and still does everything an executor must (suspended coroutines resume, timers fire)."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import rclpy
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.task import Future
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from lisa_ros.executor import QueueAwareExecutor
from node_harness import Peer, domain  # noqa: F401  (domain: fixture)
from ros_fixtures import subprocess_env


@pytest.fixture
def camera_side(domain):  # noqa: F811
    """A node spun by QueueAwareExecutor in a thread, in a context of its own, and a peer to talk to it."""
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = Node("executor_under_test", context=context)
    executor = QueueAwareExecutor(num_threads=4, context=context)
    executor.add_node(node)
    peer = Peer(domain)
    yield node, executor, peer
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown(context=context)
    peer.close()


def spin_in_thread(executor) -> threading.Thread:
    t = threading.Thread(target=executor.spin, daemon=True)
    t.start()
    return t


CAMERA = """
import sys, time, rclpy
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("camera")
pub = node.create_publisher(Image, "/camera/color/image_raw", 10)
frame = Image(height=48, width=64, encoding="rgb8", step=192, data=bytes(48 * 64 * 3))
while pub.get_subscription_count() == 0:
    time.sleep(0.05)
time.sleep(1.0)
for _ in range(int(sys.argv[1])):
    pub.publish(frame)
    time.sleep(0.1)
time.sleep(0.5)
"""


def test_a_best_effort_camera_stream_is_taken_whole(camera_side, domain):  # noqa: F811
    """A 10 Hz camera in a process of its own. rclpy's MultiThreadedExecutor took 18-34 of 80 here; this executor,
    before it took subscriptions on its spinning thread, 51-70 (and 63-69 on a CI machine).

    The best of up to three streams counts, so a moment of a busy machine does not decide; the executor's fault
    shows in every stream."""
    node, executor, _ = camera_side
    arrivals = []
    node.create_subscription(Image, "/camera/color/image_raw", lambda m: arrivals.append(time.monotonic()),
                             qos_profile_sensor_data)
    ticks = []
    node.create_timer(0.25, lambda: ticks.append(time.monotonic()))
    spin_in_thread(executor)
    sent, taken = 80, []
    for _ in range(3):
        arrivals.clear()
        camera = subprocess.run([sys.executable, "-c", CAMERA, str(sent)], timeout=60, env=subprocess_env(
            ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST"))
        assert camera.returncode == 0
        taken.append(len(arrivals))
        if taken[-1] >= 0.9 * sent:
            break
    assert taken[-1] >= 0.9 * sent, f"took {taken} of {sent} frames in each stream"
    window = [t for t in ticks if arrivals[0] < t < arrivals[-1]]
    assert len(window) >= 4 * (arrivals[-1] - arrivals[0]) * 0.8  # the timer kept time meanwhile


def test_a_coroutine_callback_suspended_on_a_future_resumes(camera_side):
    """An async service callback awaits a future that a timer of the node completes later: the executor must run
    the suspended task again once the future is done (the work it skips is only work not yet started)."""
    node, executor, peer = camera_side
    group = ReentrantCallbackGroup()

    async def answer(_request, response):
        done = Future(executor=executor)

        def complete():
            timer.cancel()
            done.set_result("late")

        timer = node.create_timer(0.3, complete, callback_group=group)
        response.message = await done
        response.success = True
        return response

    node.create_service(Trigger, "/delayed", answer, callback_group=group)
    spin_in_thread(executor)
    responses = peer.call_many(Trigger, "/delayed", [Trigger.Request() for _ in range(3)], timeout=20)
    assert [(r.success, r.message) for r in responses] == [(True, "late")] * 3
