"""lisa_node's inputs and lifecycle, in a real process over real DDS: autostart off, compressed colour, depth and
camera infos paired by stamp from their topics, reliable input QoS, FIFO order and the reject policy, cleanup and
shutdown, and activation failing on a missing or corrupt checkpoint.

The model is a tiny random "segger" (test/talker.py): every token it generates is [SEG], so max_new_tokens=n gives
exactly n (random) masks. 3D targets are checked against known geometry: the depth camera sees a flat wall."""
import os
import shutil
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from lisa_ros.geometry import CameraIntrinsics
from lisa_ros.image_conversion import depth_to_image, image_to_numpy, rgb_to_compressed
from lisa_ros.msg import SegmentationResult
from lisa_ros.ros_conversions import camera_info_from_intrinsics
from lisa_ros.srv import ReasonSegment
from node_harness import NodeProcess, Peer, claim_domain, domain, peer, solid_image  # noqa: F401  (fixtures)
from talker import save_segger

SRV = "/lisa_node/reason_segment"
COLOR_K = CameraIntrinsics(140.0, 140.0, 79.5, 59.5, 160, 120)
# A depth camera registered to colour: the same grid, so the expected centroid is exact for any mask. (Depth at
# another resolution against known geometry: test_geometry.py, on object-shaped masks.)
DEPTH_K = CameraIntrinsics(140.0, 140.0, 79.5, 59.5, 160, 120)
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
BEST_EFFORT = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)


@pytest.fixture(scope="module")
def segger(tmp_path_factory):
    return save_segger(tmp_path_factory.mktemp("segger") / "model")


@pytest.fixture(scope="module")
def node(domain, segger, tmp_path_factory):
    proc = NodeProcess(domain, tmp_path_factory.mktemp("node") / "node.log", model=str(segger), autostart=False,
                       use_compressed=True, input_reliability="reliable", queue_size=2, continuous_rate=0.0,
                       diagnostics_period=0.3, warmup=False).start()
    yield proc
    assert proc.stop() == 0, proc.log()


def change_state(peer, transition_id) -> bool:
    req = ChangeState.Request()
    req.transition.id = transition_id
    return peer.call(ChangeState, "/lisa_node/change_state", req, timeout=60).success


def state_of(peer) -> str:
    return peer.call(GetState, "/lisa_node/get_state", GetState.Request(), timeout=60).current_state.label


@pytest.fixture
def active(peer, node):
    """The module's node, brought to active whatever ran before (the tests below also pass when run alone)."""
    if state_of(peer) == "unconfigured":
        assert change_state(peer, Transition.TRANSITION_CONFIGURE)
    if state_of(peer) == "inactive":
        assert change_state(peer, Transition.TRANSITION_ACTIVATE)
    assert state_of(peer) == "active"
    return node


def set_string(peer, name: str, value: str) -> bool:
    param = Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value))
    res = peer.call(SetParameters, "/lisa_node/set_parameters", SetParameters.Request(parameters=[param]), 30)
    return res.results[0].successful


def header(stamp: float, frame_id: str) -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = int(stamp), int(round((stamp % 1) * 1e9))
    return h


def ask(peer, instruction="where would I put the clothes", tokens=1, image=None):
    req = ReasonSegment.Request(instruction=instruction, max_new_tokens=tokens)
    if image is not None:
        req.image = image
    return peer.call(ReasonSegment, SRV, req, 120)


def test_autostart_off_waits_for_a_lifecycle_manager(peer, node):
    diagnostics = peer.subscribe(DiagnosticArray, "/diagnostics")
    assert state_of(peer) == "unconfigured"
    assert peer.spin_until(lambda: diagnostics, 10)  # reported from construction on, before any transition
    assert diagnostics[-1].status[0].level == b"\x01" and "model not loaded" in diagnostics[-1].status[0].message
    assert change_state(peer, Transition.TRANSITION_CONFIGURE) and state_of(peer) == "inactive"
    assert change_state(peer, Transition.TRANSITION_ACTIVATE) and state_of(peer) == "active"


def test_reliable_inputs_refuse_a_best_effort_camera(peer, active):
    diagnostics = peer.subscribe(DiagnosticArray, "/diagnostics")
    lossy = peer.node.create_publisher(CompressedImage, "/camera/color/image_raw/compressed", BEST_EFFORT)
    rgb, _ = solid_image(120, 160)
    for _ in range(5):
        lossy.publish(rgb_to_compressed(rgb, header(10.0, "camera_color_optical_frame")))
        peer.spin_until(lambda: False, 0.1)
    peer.spin_until(lambda: False, 1.0)
    counts = {kv.value for d in diagnostics for kv in d.status[0].values if kv.key == "color_frames_received"}
    assert counts == {"0"}, counts  # a reliable subscription does not match a best-effort publisher


def test_compressed_colour_with_depth_and_infos_paired_by_stamp(peer, active):
    """Colour (jpeg), depth and both camera infos from their topics. Two depth frames
    arrive: the wall at 1.5 m stamped with the colour frame, then one at 2.5 m a second later; pairing by stamp
    must take the first. Expected 3D from the pinhole model on the colour grid, independent of the node's path."""
    stamp = time.time()
    pubs = {name: peer.node.create_publisher(t, topic, RELIABLE) for name, t, topic in (
        ("color", CompressedImage, "/camera/color/image_raw/compressed"),
        ("depth", Image, "/camera/depth/image_raw"),
        ("color_info", CameraInfo, "/camera/color/camera_info"),
        ("depth_info", CameraInfo, "/camera/depth/camera_info"))}
    assert peer.spin_until(lambda: all(p.get_subscription_count() for p in pubs.values()), 10)
    pubs["color_info"].publish(camera_info_from_intrinsics(COLOR_K, header(stamp, "camera_color_optical_frame")))
    pubs["depth_info"].publish(camera_info_from_intrinsics(DEPTH_K, header(stamp, "camera_depth_optical_frame")))
    for z_mm, t in ((1500, stamp), (2500, stamp + 1.0)):
        pubs["depth"].publish(depth_to_image(np.full((120, 160), z_mm, np.uint16), header(t, "camera_depth_optical_frame")))
    rgb, _ = solid_image(120, 160)
    pubs["color"].publish(rgb_to_compressed(rgb, header(stamp, "camera_color_optical_frame")))
    peer.spin_until(lambda: False, 0.5)
    res = ask(peer)
    assert res.success, res.message
    assert abs(res.header.stamp.sec + res.header.stamp.nanosec * 1e-9 - stamp) < 1e-6
    assert len(res.masks) == 1 and len(res.targets) == 1 and res.targets[0].valid
    mask = image_to_numpy(res.masks[0]) == 255
    v, u = np.nonzero(mask)
    expected = [((u - COLOR_K.cx) / COLOR_K.fx).mean() * 1.5, ((v - COLOR_K.cy) / COLOR_K.fy).mean() * 1.5, 1.5]
    c = res.targets[0].centroid
    assert abs(c.z - 1.5) < 1e-3  # the stamped depth, not the newer 2.5 m one
    np.testing.assert_allclose([c.x, c.y], expected[:2], atol=1e-4)


def test_queued_requests_are_answered_in_arrival_order(peer, active):
    results = peer.subscribe(SegmentationResult, "/lisa_node/result")
    _, img = solid_image(120, 160)
    clients = [peer.node.create_client(ReasonSegment, SRV) for _ in range(3)]
    assert all(c.wait_for_service(timeout_sec=10) for c in clients)
    peer.spin_until(lambda: False, 0.5)  # discovery settled both ways: send order is arrival order
    futures = []
    for k, client in enumerate(clients):  # queue_size=2: one runs, two wait
        futures.append(client.call_async(ReasonSegment.Request(instruction=f"caller {k}", image=img,
                                                               max_new_tokens=6)))
        peer.spin_until(lambda: False, 0.2)
    assert peer.spin_until(lambda: all(f.done() for f in futures), 120)
    assert all(f.result().success for f in futures)
    # the result topic may also carry an earlier test's answer (it keeps the last one for late joiners)
    ours = lambda: [r.instruction for r in results if r.instruction.startswith("caller ")]  # noqa: E731
    assert peer.spin_until(lambda: len(ours()) >= 3, 10)
    assert ours() == ["caller 0", "caller 1", "caller 2"]


def test_reject_policy_refuses_while_busy(peer, active):
    assert set_string(peer, "queue_policy", "reject")
    for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP,
                       Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
        assert change_state(peer, transition)
    _, img = solid_image(120, 160)
    answers = peer.call_many(ReasonSegment, SRV, [
        ReasonSegment.Request(instruction="the cup", image=img, max_new_tokens=12) for _ in range(2)], 120)
    assert sorted(a.success for a in answers) == [False, True]
    assert "busy" in next(a.message for a in answers if not a.success)


def test_cleanup_then_shutdown(peer, active):
    node = active
    assert change_state(peer, Transition.TRANSITION_DEACTIVATE) and change_state(peer, Transition.TRANSITION_CLEANUP)
    assert state_of(peer) == "unconfigured" and "model released" in node.log()
    assert not peer.node.create_client(ReasonSegment, SRV).wait_for_service(timeout_sec=1.0)  # torn down
    assert change_state(peer, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
    assert state_of(peer) == "finalized" and node.alive()


def test_activation_fails_on_missing_and_corrupt_checkpoints(segger, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(segger, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    d, fd = claim_domain()
    proc = NodeProcess(d, tmp_path / "node.log", model=str(tmp_path / "missing"), diagnostics_period=0.3,
                       warmup=False).start()
    peer = Peer(d)
    try:
        diagnostics = peer.subscribe(DiagnosticArray, "/diagnostics")

        def reported(text):
            diagnostics.clear()
            return peer.spin_until(lambda: any(text in m.status[0].message for m in diagnostics), 60)

        assert reported("does not exist"), proc.log()
        assert state_of(peer) == "inactive" and proc.alive()
        assert "not active" in ask(peer, image=solid_image(32, 32)[1]).message
        assert set_string(peer, "model", str(corrupt))
        assert change_state(peer, Transition.TRANSITION_CLEANUP) and change_state(peer, Transition.TRANSITION_CONFIGURE)
        assert not change_state(peer, Transition.TRANSITION_ACTIVATE)
        assert reported("cannot read weights file"), [m.status[0].message for m in diagnostics[-3:]]
        assert state_of(peer) == "inactive" and proc.alive()
        assert set_string(peer, "model", str(segger))
        assert change_state(peer, Transition.TRANSITION_CLEANUP) and change_state(peer, Transition.TRANSITION_CONFIGURE)
        assert change_state(peer, Transition.TRANSITION_ACTIVATE) and state_of(peer) == "active"
        assert ask(peer, image=solid_image(32, 32)[1]).success
        assert peer.spin_until(lambda: diagnostics and diagnostics[-1].status[0].level == b"\x01"
                               and "cannot" not in diagnostics[-1].status[0].message, 5)  # the error is cleared
    finally:
        peer.close()
        proc.stop()
        os.close(fd)


def test_none_and_bad_parameters_from_the_command_line(tmp_path):
    """`-p depth_topic:=''` arrives as two quote characters and `none` is the documented word: both mean "not
    set". A bad value is refused at configure: the log and /diagnostics say which parameter and why."""
    d, fd = claim_domain()
    proc = NodeProcess(d, tmp_path / "node.log", model="tiny-random", depth_topic="''", camera_info_topic="none",
                       queue_policy="bogus", diagnostics_period=0.3, warmup=False).start()
    peer = Peer(d)
    try:
        diagnostics = peer.subscribe(DiagnosticArray, "/diagnostics")
        assert peer.spin_until(lambda: any("queue_policy must be fifo or reject" in m.status[0].message
                                           for m in diagnostics), 60), proc.log()
        assert state_of(peer) == "unconfigured" and "bad parameter: queue_policy" in proc.log()
        param = Parameter(name="queue_policy", value=ParameterValue(type=ParameterType.PARAMETER_STRING,
                                                                     string_value="fifo"))
        peer.call(SetParameters, "/lisa_node/set_parameters", SetParameters.Request(parameters=[param]), 30)
        assert change_state(peer, Transition.TRANSITION_CONFIGURE) and change_state(peer, Transition.TRANSITION_ACTIVATE)
        peer.spin_until(lambda: False, 0.5)
        graph = peer.node.get_subscriptions_info_by_topic
        assert graph("/camera/color/image_raw") and not graph("/camera/depth/image_raw")
        assert not graph("/camera/color/camera_info") and graph("/camera/depth/camera_info")
    finally:
        peer.close()
        proc.stop()
        os.close(fd)
