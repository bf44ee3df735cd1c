"""The built-in demo model end to end: a freshly generated household scene played over DDS as a camera, lisa_node
with `lisa-demo`, questions from a client. Right answers, not wiring: each mask is compared with the scene's true
instance and each 3D centroid with the object's true visible-surface centroid. Also the main job, scripts/demo.sh.
"""
import json
import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from lisa_ros.image_conversion import image_to_numpy
from lisa_ros.scenes.household import generate_scene
from lisa_ros.srv import ReasonSegment
from node_harness import NodeProcess, Peer, claim_domain
from ros_fixtures import LARGE_DATA, ROOT, subprocess_env

SRV = "/lisa_node/reason_segment"
# Held-out phrasings (training.household never trained on them) of four kinds, and a thing the scene lacks.
# The chair is a classic 3D miss: its mask here is right (IoU 0.92) but, as the model gives it, also paints a patch
# on the plant's pot, 70 cm away and of a like colour, which puts the centroid 3.2 cm off. The node's region rule
# (mask_min_peak_ratio) drops that patch: 0.9 cm.
QUESTIONS = {"laundry_basket": "where can I toss my dirty shirt", "plant": "what grows green leaves",
             "shelf": "where would the books stand", "chair": "where can a guest take a seat"}
# Things this scene lacks, in held-out phrasings: no mug, no table.
ABSENT = {"mug": "what can I pour tea into", "table": "a flat surface to eat my dinner at"}
BOUND_M = 0.03  # the bound on the 3D centroid


def truth_of(scene, kind: str):
    truth = json.loads((scene / "ground_truth.json").read_text())
    frame = truth["frames"][0]
    obj = next(o for o in frame["objects"] if o["kind"] == kind)
    ids = cv2.imread(str(scene / frame["instance"]), cv2.IMREAD_UNCHANGED)
    return ids == obj["id"], np.asarray(obj["visible_centroid_camera"])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    # a layout no training frame had (its own seed), at ScanNet's colour/depth calibrations scaled to 640x480/320x240
    return generate_scene(tmp_path_factory.mktemp("household") / "scene", kinds=["laundry_basket", "chair", "plant",
                          "waste_bin", "shelf"], num_frames=1, seed=2010)


@pytest.fixture(scope="module")
def robot(scene, tmp_path_factory):
    """Peer of lisa_node with lisa-demo and a scene player as the camera, each in its own process, both with the
    shipped Fast DDS profile (as demo.sh runs them). Yielded once a frame has reached the node."""
    domain, fd = claim_domain()
    logs = tmp_path_factory.mktemp("robot")
    node = NodeProcess(domain, logs / "node.log", env=LARGE_DATA, model="lisa-demo", continuous_rate=0.0).start()
    env = subprocess_env(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", **LARGE_DATA)
    player = subprocess.Popen([sys.executable, "-m", "lisa_ros.scene_player", "--scene", str(scene), "--rate", "5",
                               "--loop", "--wait-for-subscriber"], cwd=ROOT, env=env,
                              stdout=open(logs / "player.log", "w"), stderr=subprocess.STDOUT)
    peer = Peer(domain)
    try:
        first = ask(peer, QUESTIONS["laundry_basket"], deadline_s=180)
        assert not first.message.startswith("no frame received yet"), (
            f"{first.message}; player {'running' if player.poll() is None else f'exited {player.returncode}'}\n"
            f"player log: {(logs / 'player.log').read_text()[-2000:]}\nnode log: {node.log()[-2000:]}")
        yield peer
    finally:
        peer.close()
        player.terminate()
        player.wait(timeout=20)
        assert node.stop() == 0, node.log()
        os.close(fd)


def ask(peer, question: str, deadline_s: float = 60.0):
    """The node's answer once it has a frame with depth: the camera may not have delivered yet, or its depth
    stream may start after the colour one."""
    req = ReasonSegment.Request(instruction=question)
    end = time.monotonic() + deadline_s
    while True:
        res = peer.call(ReasonSegment, SRV, req, 120)
        no_frame = res.message.startswith("no frame received yet")
        no_depth = res.success and len(res.masks) and not any(t.valid for t in res.targets)
        if not (no_frame or no_depth) or time.monotonic() > end:
            return res
        peer.spin_until(lambda: False, 0.5)


@pytest.mark.parametrize("kind", QUESTIONS)
def test_implicit_questions_get_the_right_object_in_2d_and_3d(robot, scene, kind):
    res = ask(robot, QUESTIONS[kind])
    assert res.success and len(res.masks) >= 1, res.message
    assert res.text.startswith("Sure"), res.text
    instance, centroid = truth_of(scene, kind)
    mask = image_to_numpy(res.masks[0]) == 255
    assert mask.shape == instance.shape == (480, 640)
    assert iou(mask, instance) >= 0.7, iou(mask, instance)
    target = res.targets[0]
    assert target.valid
    error = np.linalg.norm([target.centroid.x - centroid[0], target.centroid.y - centroid[1],
                            target.centroid.z - centroid[2]])
    assert error <= BOUND_M, f"3D centroid {error * 100:.1f} cm from the truth"


@pytest.mark.parametrize("kind", ABSENT)
def test_a_thing_that_is_not_there_gets_no_mask(robot, kind):
    res = ask(robot, ABSENT[kind])
    assert res.success and len(res.masks) == 0 and res.text.startswith("Sorry"), (res.text, res.message)


def test_the_main_job(tmp_path):
    """scripts/demo.sh, as the README's first command runs it: the answer, its 3D centroid, the overlay, and
    the mask over the basket of the demo scene."""
    domain, fd = claim_domain()
    try:
        run = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], cwd=ROOT, capture_output=True, text=True,
                             timeout=600, env={**os.environ, "OUT": str(tmp_path), "ROS_DOMAIN_ID": str(domain)})
    finally:
        os.close(fd)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    summary = json.loads((tmp_path / "answer.json").read_text())
    assert summary["success"] and summary["text"].startswith("Sure") and (tmp_path / "overlay.png").is_file()
    assert "answer: Sure" in run.stdout and " m -> " in run.stdout  # the answer and the 3D centroid are printed
    instance, centroid = truth_of(tmp_path / "household_scene", "laundry_basket")
    mask = cv2.imread(str(tmp_path / "mask_0.png"), cv2.IMREAD_GRAYSCALE) == 255
    assert iou(mask, instance) >= 0.7
    assert np.linalg.norm(np.asarray(summary["targets"][0]["centroid_m"]) - centroid) <= 0.03
