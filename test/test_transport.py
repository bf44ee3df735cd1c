"""config/fastdds_large_data.xml: with it, 640x480 frames reach lisa_node over sensor-data (best-effort) QoS.

Fast DDS's default 512 KiB shared-memory segment is smaller than one such frame; the shipped profile raises it. The
node's own count of received frames comes from /diagnostics.
"""
import os
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from lisa_ros.image_conversion import rgb_to_image
from node_harness import NodeProcess, Peer, claim_domain
from ros_fixtures import ROOT

PROFILE = ROOT / "config" / "fastdds_large_data.xml"


def frames_received(diagnostics: list) -> int:
    values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
    return int(values["color_frames_received"])


@pytest.fixture
def large_data_profile(monkeypatch):
    # Read when a DDS participant is created: by the node process (it inherits the environment) and the peer below.
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", str(PROFILE))


def test_camera_sized_frames_arrive_best_effort_with_the_shipped_profile(large_data_profile, tmp_path):
    domain, lock = claim_domain()
    node = NodeProcess(domain, tmp_path / "node.log", model="tiny-random", continuous_rate=0.0,
                       diagnostics_period=0.5).start()
    peer = Peer(domain)
    try:
        diagnostics = peer.subscribe(DiagnosticArray, "/diagnostics")
        pub = peer.node.create_publisher(Image, "/camera/color/image_raw", 10)
        assert peer.spin_until(lambda: pub.get_subscription_count() > 0 and diagnostics, 60), node.log()
        rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)  # 900 KiB per frame
        before = frames_received(diagnostics)
        sent = 30
        for _ in range(sent):
            pub.publish(rgb_to_image(rgb, Header(frame_id="camera_color_optical_frame")))
            peer.spin_until(lambda: False, 0.1)  # 10 Hz
        deadline = time.monotonic() + 5
        peer.spin_until(lambda: frames_received(diagnostics) - before >= sent or time.monotonic() > deadline, 6)
        received = frames_received(diagnostics) - before
        assert received >= 0.9 * sent, f"{received} of {sent} frames arrived"
    finally:
        peer.close()
        node.stop()
        os.close(lock)
