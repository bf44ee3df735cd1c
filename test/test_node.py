"""lisa_node in a real process over real DDS: round trips, bad inputs, concurrency, intake during inference,
continuous mode, lifecycle. The node runs the offline tiny random model; its answers are checked against the
library (`LisaSegmenter.segment`) on the same frame, so the node adds transport, not differences."""
import json
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import ListParameters
from sensor_msgs.msg import Image
from std_msgs.msg import String

from lisa_model import LisaSegmenter
from lisa_model.mask_regions import keep_confident_regions
from lisa_ros.diagnostics import NodeStatus
from lisa_ros.image_conversion import image_to_numpy
from lisa_ros.msg import SegmentationResult
from lisa_ros.parameters import default_settings
from lisa_ros.srv import ReasonSegment
from node_harness import NodeProcess, Peer, domain, peer, solid_image  # noqa: F401  (domain, peer: fixtures)
from ros_fixtures import ROOT, subprocess_env, synthetic_scene  # noqa: F401  (fixture)

SRV = "/lisa_node/reason_segment"


@pytest.fixture(scope="module")
def node(domain, tmp_path_factory):
    proc = NodeProcess(domain, tmp_path_factory.mktemp("node") / "node.log", model="tiny-random",
                       continuous_rate=2.0, queue_size=1, max_image_pixels=1_000_000,
                       max_new_tokens_limit=1500).start()
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def library():
    return LisaSegmenter.from_pretrained("tiny-random")


def ask(peer, instruction, image=None, max_new_tokens=16, timeout=120.0):
    req = ReasonSegment.Request(instruction=instruction, max_new_tokens=max_new_tokens)
    if image is not None:
        req.image = image
    return peer.call(ReasonSegment, SRV, req, timeout)


def test_round_trip_matches_the_library(peer, library):
    rgb, msg = solid_image(120, 160, stamp_sec=7)
    res = ask(peer, "where would I put the clothes", msg, max_new_tokens=24)
    direct = library.segment(rgb, "where would I put the clothes", max_new_tokens=24)
    assert res.success, res.message
    assert res.text == library.plain_text(direct.text)
    assert (res.model_family, res.model_checkpoint) == ("lisa", "tiny-random")  # who answered
    assert list(res.mask_labels) == [""] * len(res.masks) and not res.rejected and not res.rejected_labels
    assert len(res.masks) == len(direct.masks) >= 1  # the tiny model emits [SEG] on this frame
    ratio = default_settings().mask_min_peak_ratio  # the node's one change: weak detached regions dropped
    for m, logits, raw, area in zip(res.masks, direct.mask_logits, direct.masks, res.mask_areas):
        assert (m.encoding, m.height, m.width) == ("mono8", 120, 160)
        assert m.header.stamp.sec == 7 and m.header.frame_id == "camera_color_optical_frame"
        pixels = image_to_numpy(m)
        assert set(np.unique(pixels)) <= {0, 255}
        expected = keep_confident_regions(logits, ratio)
        np.testing.assert_array_equal(pixels == 255, expected)
        assert area == int(expected.sum()) and not (expected & ~raw).any()
    assert res.header.stamp.sec == 7
    assert len(res.mask_scores) == len(res.masks) and all(0 <= s <= 1 for s in res.mask_scores)
    assert res.targets == []  # no depth with this frame


@pytest.mark.parametrize("instruction", ["", "   \n\t"])
def test_empty_instruction_is_refused(peer, instruction):
    _, msg = solid_image(32, 32)
    res = ask(peer, instruction, msg)
    assert not res.success and "instruction is empty" in res.message


def test_no_frame_received_yet(peer):
    res = ask(peer, "where is the cup")  # nothing is published on the colour topic in this module
    assert not res.success and "no frame received yet" in res.message


def test_client_asks_again_until_the_camera_delivers(peer, domain, tmp_path):
    """`lisa_ros.client` started before any frame: it retries while the node says "no frame received yet"."""
    env = subprocess_env(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    client = subprocess.Popen([sys.executable, "-m", "lisa_ros.client", "where can I sit", "--out", str(tmp_path),
                               "--timeout", "60", "--max-new-tokens", "8"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peer.spin_until(lambda: False, 3.0)  # the client is asking, the camera is not up yet
    assert client.poll() is None
    pub = peer.node.create_publisher(Image, "/camera/color/image_raw", 10)
    _, frame = solid_image(48, 64, stamp_sec=42)
    peer.deliver_frame(pub, frame)
    out, _ = client.communicate(timeout=60)
    summary = json.loads((tmp_path / "answer.json").read_text())
    assert client.returncode == 0 and summary["success"] and out.startswith("answer:"), out
    assert summary["generated_tokens"] >= 1


@pytest.mark.parametrize("mutate, expected", [
    (lambda m: setattr(m, "encoding", "yuv422_weird"), "encoding"),
    (lambda m: setattr(m, "data", bytes(m.data)[:-7]), "data"),
    (lambda m: (setattr(m, "height", 2000), setattr(m, "width", 2000), setattr(m, "step", 6000),
                setattr(m, "data", bytes(2000 * 6000))), "pixels"),
])
def test_bad_images_are_refused_and_the_node_keeps_serving(peer, node, mutate, expected):
    _, msg = solid_image(40, 40)
    mutate(msg)
    res = ask(peer, "the cup", msg)
    assert not res.success and expected in res.message.lower(), res.message
    _, good = solid_image(40, 40)
    assert ask(peer, "the cup", good).success and node.alive()


def test_a_huge_max_new_tokens_is_capped(peer):
    _, msg = solid_image(40, 56)
    res = ask(peer, "describe the room", msg, max_new_tokens=4294967295)
    assert res.success and "max_new_tokens 4294967295 capped to 1500" in res.message
    assert 0 < res.generated_tokens <= 1500


def test_text_only_answer_is_a_success_with_no_masks(peer, library):
    rgb, msg = solid_image(48, 64)
    for tokens in range(1, 12):  # find a budget at which the tiny model has produced no [SEG] yet
        if len(library.segment(rgb, "describe the room", max_new_tokens=tokens).masks) == 0:
            break
    else:
        pytest.skip("the tiny model emits [SEG] at once on this frame")
    res = ask(peer, "describe the room", msg, max_new_tokens=tokens)
    assert res.success and len(res.masks) == 0 and res.text


def test_two_concurrent_callers_both_answered(peer):
    _, a = solid_image(64, 64, stamp_sec=11)
    _, b = solid_image(64, 80, stamp_sec=12)
    ra, rb = peer.call_many(ReasonSegment, SRV, [
        ReasonSegment.Request(instruction="the mug", image=a, max_new_tokens=8),
        ReasonSegment.Request(instruction="the chair", image=b, max_new_tokens=8)])
    assert ra.success and rb.success
    assert ra.header.stamp.sec == 11 and rb.header.stamp.sec == 12  # each got its own frame


def test_queue_bound_answers_busy(peer):
    """queue_size=1: one runs, one waits, the third is refused at once."""
    _, img = solid_image(64, 64)
    reqs = [ReasonSegment.Request(instruction="the mug", image=img, max_new_tokens=400) for _ in range(3)]
    results = peer.call_many(ReasonSegment, SRV, reqs, timeout=180)
    busy = [r for r in results if not r.success]
    assert len(busy) == 1 and "busy" in busy[0].message
    assert sum(r.success for r in results) == 2


def test_frames_and_services_keep_flowing_during_inference(peer):
    """While a long answer runs: new frames are taken in (the next answer uses the newest one), the
    lifecycle and parameter services answer at once, and /diagnostics keeps reporting the intake."""
    pub = peer.node.create_publisher(Image, "/camera/color/image_raw", 10)
    diagnostics = peer.subscribe(DiagnosticArray, "/diagnostics")
    _, first = solid_image(64, 64, stamp_sec=100)
    long_call = {}
    worker_peer = Peer(peer.context.get_domain_id(), "long_caller")

    def long_answer():  # ~1500 tokens: seconds of CPU inference
        long_call["res"] = ask(worker_peer, "the mug", first, max_new_tokens=1500, timeout=600)

    # Discovery first (a loaded machine takes seconds to match a new client): the calls during inference time the node.
    peer.call(GetState, "/lisa_node/get_state", GetState.Request(), timeout=30)
    peer.call(ListParameters, "/lisa_node/list_parameters", ListParameters.Request(), timeout=30)
    t = threading.Thread(target=long_answer)
    t.start()
    time.sleep(1.0)
    service_times, stamp = [], 100
    while t.is_alive() and stamp < 140:
        stamp += 1
        _, frame = solid_image(64, 64, stamp_sec=stamp)
        pub.publish(frame)
        t0 = time.monotonic()
        state = peer.call(GetState, "/lisa_node/get_state", GetState.Request(), timeout=10)
        params = peer.call(ListParameters, "/lisa_node/list_parameters", ListParameters.Request(), timeout=10)
        service_times.append((time.monotonic() - t0, t.is_alive()))
        assert state.current_state.label == "active" and "model" in params.result.names
        peer.spin_until(lambda: False, 0.1)
    t.join()
    worker_peer.close()
    assert long_call["res"].success
    during = [dt for dt, alive in service_times if alive]
    assert len(during) >= 2, "the long inference finished too early to show anything"
    assert max(during) < 5.0
    res = ask(peer, "the chair")  # empty image: the latest frame, taken in while the long inference ran
    assert res.success and res.header.stamp.sec == stamp
    busy = [{kv.key: kv.value for kv in d.status[0].values} for d in diagnostics
            if any(kv.key == "requests_pending" and kv.value != "0" for kv in d.status[0].values)]
    received = sorted({int(v["color_frames_received"]) for v in busy})
    assert len(received) >= 2, f"diagnostics while busy: {busy}"
    assert busy[-1]["model_loaded"] == "True" and busy[-1]["family"] == "lisa"


def test_diagnostics_report_frame_age_staleness_and_failures(peer):
    """Frames stamped now: a realistic age and OK; frames stop: WARN naming the age; a bad request: counted."""
    pub = peer.node.create_publisher(Image, "/camera/color/image_raw", 10)
    diagnostics = peer.subscribe(DiagnosticArray, "/diagnostics")
    rgb, frame = solid_image(48, 64)
    values = lambda d: {kv.key: kv.value for kv in d.status[0].values}  # noqa: E731

    published = []  # when we published each frame

    def stream_until(condition, timeout: float) -> bool:
        """Publish frames stamped with the wall clock at ~10 Hz until `condition()` (or the timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not condition():
            frame.header.stamp = peer.node.get_clock().now().to_msg()
            pub.publish(frame)
            published.append(time.monotonic())
            peer.spin_until(lambda: False, 0.1)
        return condition()

    # The node's newest frame is an earlier test's (stamped at second ~200) until the new publisher is matched and
    # its frames arrive; a loaded machine may take over a second to match. A report of a now-stamped frame must
    # come (else the age is computed wrongly); after a whole rate window of our stream, the rate is ours.
    assert stream_until(lambda: diagnostics and float(values(diagnostics[-1])["newest_frame_age_s"]) < 1.0, 15)
    streaming_since = time.monotonic()
    assert stream_until(lambda: time.monotonic() - streaming_since > NodeStatus.RATE_WINDOW_S + 1.5, 10)
    fresh = diagnostics[-1]
    assert fresh.status[0].level == b"\x00", fresh.status[0].message  # OK
    assert 0.0 <= float(values(fresh)["newest_frame_age_s"]) < 1.0
    # Our publishing loop is slower than 10 Hz on a loaded machine: the rate we sent over the window is the truth.
    now = time.monotonic()
    ours = sum(t > now - NodeStatus.RATE_WINDOW_S for t in published) / NodeStatus.RATE_WINDOW_S
    assert 0.6 * ours < float(values(fresh)["color_rate_hz"]) < 1.4 * ours + 0.5, (ours, values(fresh))
    failed = int(values(fresh)["requests_failed"])
    assert not ask(peer, "").success
    diagnostics.clear()
    assert peer.spin_until(lambda: diagnostics and diagnostics[-1].status[0].level == b"\x01", 6)  # WARN: stale
    stale = diagnostics[-1]
    assert re.search(r"newest frame is \d+\.\d s old", stale.status[0].message)
    assert 2.0 < float(values(stale)["newest_frame_age_s"]) < 10.0
    assert int(values(stale)["requests_failed"]) == failed + 1


def test_continuous_mode_publishes_results(peer):
    results = peer.subscribe(SegmentationResult, "/lisa_node/result")
    answers = peer.subscribe(String, "/lisa_node/answer")
    overlays = peer.subscribe(Image, "/lisa_node/overlay")
    instr = peer.node.create_publisher(String, "/lisa_node/instruction", 10)
    pub = peer.node.create_publisher(Image, "/camera/color/image_raw", 10)
    assert peer.spin_until(lambda: instr.get_subscription_count() > 0 and pub.get_subscription_count() > 0, 10)
    peer.spin_until(lambda: False, 0.5)  # the node's side of the connections too
    instr.publish(String(data="the mug I should pick up"))
    deadline, stamp = time.monotonic() + 60, 200  # a loaded machine answers slowly: wait for answers, not a count
    while time.monotonic() < deadline and stamp < 230:
        _, frame = solid_image(48, 64, stamp_sec=stamp)
        pub.publish(frame)
        stamp += 1
        if peer.spin_until(lambda: sum(r.instruction == "the mug I should pick up" for r in results) >= 2, 2.0):
            break
    mine = [r for r in results if r.instruction == "the mug I should pick up"]
    assert len(mine) >= 2 and len({r.header.stamp.sec for r in mine}) == len(mine)  # new frames, new answers
    assert answers and overlays
    assert overlays[-1].encoding == "rgb8" and (overlays[-1].height, overlays[-1].width) == (48, 64)
    instr.publish(String(data=""))  # stop
    peer.spin_until(lambda: False, 1.0)
    count = len(results)
    for stamp in range(230, 240):  # new frames, no standing instruction: nothing is answered
        pub.publish(solid_image(48, 64, stamp_sec=stamp)[1])
        peer.spin_until(lambda: False, 0.2)
    assert len(results) == count


def test_continuous_mode_skips_ticks_while_busy(peer):
    """A long service request holds the model: the 2 Hz standing instruction is skipped, not queued behind it."""
    results = peer.subscribe(SegmentationResult, "/lisa_node/result")
    diagnostics = peer.subscribe(DiagnosticArray, "/diagnostics")
    instr = peer.node.create_publisher(String, "/lisa_node/instruction", 10)
    pub = peer.node.create_publisher(Image, "/camera/color/image_raw", 10)
    _, img = solid_image(64, 64, stamp_sec=300)
    worker = Peer(peer.context.get_domain_id(), "long_caller")
    thread = threading.Thread(target=lambda: ask(worker, "the long one", img, 1500, 600))
    thread.start()
    assert peer.spin_until(lambda: diagnostics and {kv.key: kv.value for kv in diagnostics[-1].status[0].values}[
        "requests_pending"] != "0", 30)  # the long request holds the model now
    instr.publish(String(data="the standing question"))
    long_done = lambda: any(r.instruction == "the long one" for r in results)  # noqa: E731
    stamp = 310
    while not long_done():  # new frames while it runs
        stamp += 1
        pub.publish(solid_image(48, 64, stamp_sec=stamp)[1])
        peer.spin_until(long_done, 0.25)
    thread.join()
    worker.close()
    assert stamp > 314, "the long request ended too soon to show anything"
    # no new frames from here on; the next tick answers the newest one (a loaded machine may take seconds)
    peer.spin_until(lambda: any(r.instruction == "the standing question" for r in results), 30)
    peer.spin_until(lambda: False, 1.0)
    order = [r.instruction for r in results if r.instruction in ("the long one", "the standing question")]
    after = [r.header.stamp.sec for r in results if r.instruction == "the standing question"]
    assert order[0] == "the long one"  # nothing was answered while the model was busy
    # the skipped ticks are gone, not queued: then the newest frame is answered (at most one tick raced the end)
    assert 1 <= len(after) <= 2 and after[-1] == stamp and min(after) >= stamp - 1, (after, stamp)
    instr.publish(String(data=""))
    peer.spin_until(lambda: False, 1.0)


def test_lifecycle_frees_and_reloads_the_model(peer, node):
    def change(transition_id):
        req = ChangeState.Request()
        req.transition.id = transition_id
        return peer.call(ChangeState, "/lisa_node/change_state", req, timeout=60).success

    _, img = solid_image(32, 32)
    assert change(Transition.TRANSITION_DEACTIVATE)
    res = ask(peer, "the cup", img)
    assert not res.success and "not active" in res.message
    assert "model released" in node.log()
    assert change(Transition.TRANSITION_ACTIVATE)
    assert ask(peer, "the cup", img).success
    state = peer.call(GetState, "/lisa_node/get_state", GetState.Request())
    assert state.current_state.label == "active"


def _distance_to_scene(points_world: np.ndarray) -> np.ndarray:
    """Distance (m) of each point to the nearest surface of the synthetic scene: the room's walls, floor and
    ceiling, or one of its boxes."""
    from lisa_ros.scenes.synthetic import DEFAULT_BOXES, ROOM_MAX, ROOM_MIN

    best = np.minimum(np.abs(points_world - ROOM_MIN), np.abs(ROOM_MAX - points_world)).min(axis=1)
    for box in DEFAULT_BOXES:
        outside = np.linalg.norm(np.maximum(np.maximum(box.min - points_world, points_world - box.max), 0), axis=1)
        inside = np.minimum(points_world - box.min, box.max - points_world).min(axis=1)
        best = np.minimum(best, np.where(outside > 0, outside, np.maximum(inside, 0)))
    return best


def test_3d_targets_points_and_markers_on_a_scannet_frame(peer, synthetic_scene):
    """Colour, depth at another resolution and both camera infos sent with the request. Checked against the
    scene's known geometry: every published 3D point, taken to the world frame with the frame's known pose, lies
    on a surface of the scene; each target's centroid is the mean of its mask's published points."""
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import Header
    from visualization_msgs.msg import MarkerArray

    from lisa_ros.image_conversion import depth_to_image, rgb_to_image
    from lisa_ros.ros_conversions import camera_info_from_intrinsics, cloud_to_array
    from lisa_ros.scenes.scannet import ScanNetScene

    scene = ScanNetScene.open(synthetic_scene)
    fid = scene.frame_ids[0]
    rgb, depth_mm = scene.read_color(fid), scene.read_depth_mm(fid)
    assert depth_mm.shape != rgb.shape[:2]  # depth at another resolution than colour
    header = Header(frame_id="camera_color_optical_frame")
    header.stamp.sec = 300
    req = ReasonSegment.Request(instruction="where would I put the clothes", max_new_tokens=24,
                                image=rgb_to_image(rgb, header), depth=depth_to_image(depth_mm, header),
                                camera_info=camera_info_from_intrinsics(scene.color_intrinsics, header),
                                depth_camera_info=camera_info_from_intrinsics(scene.depth_intrinsics, header))
    clouds = peer.subscribe(PointCloud2, "/lisa_node/points")
    markers = peer.subscribe(MarkerArray, "/lisa_node/markers")
    res = peer.call(ReasonSegment, SRV, req)
    assert res.success and len(res.masks) >= 1, res.message
    assert len(res.targets) == len(res.masks) and any(t.valid for t in res.targets)
    assert peer.spin_until(lambda: any(c.header.stamp.sec == 300 for c in clouds) and
                           any(m.markers and m.markers[0].header.stamp.sec == 300 for m in markers), 10)
    cloud = cloud_to_array(next(c for c in clouds if c.header.stamp.sec == 300))
    xyz = np.stack([cloud["x"], cloud["y"], cloud["z"]], axis=1).astype(np.float64)
    pose = scene.pose(fid)
    world = xyz @ pose[:3, :3].T + pose[:3, 3]
    assert np.percentile(_distance_to_scene(world), 99) < 0.01  # depth is stored in whole millimetres
    for i, target in enumerate(res.targets):
        mine = xyz[cloud["label"] == i]
        assert target.point_count == len(mine)
        if target.valid:
            np.testing.assert_allclose([target.centroid.x, target.centroid.y, target.centroid.z], mine.mean(0),
                                       atol=1e-4)
