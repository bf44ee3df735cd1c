"""launch/lisa.launch.py run for real, the way `ros2 launch lisa_ros lisa.launch.py` runs it.

launch / launch_ros / ros2launch come from a system ROS 2 install when there is one; otherwise from the upstream
Jazzy sources vendored beside the project (../shared/vendor/ros2_launch), installed into a cached throwaway prefix
(test/ros_install.py). This package is installed as colcon would install it, so `ros2launch` finds the file and the
node executable through the ament index. Without either, the tests skip and say why.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.srv import GetParameters

from lisa_ros.parameters import PARAMETERS
from lisa_ros.srv import ReasonSegment
from node_harness import Peer, claim_domain, solid_image
from ros_install import installed_env, launch_prefix, lisa_prefix, system_launch_ros

LAUNCH = ("import sys; from ros2launch.api import launch_a_launch_file, get_share_file_path_from_package; "
          "sys.exit(launch_a_launch_file(launch_file_path=get_share_file_path_from_package("
          "package_name='lisa_ros', file_name='lisa.launch.py'), launch_file_arguments=sys.argv[1:], "
          "noninteractive=True))")
QUICK = ["model:=tiny-random", "warmup:=false", "diagnostics_period:=0.0"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    prefixes = [lisa_prefix(tmp_path_factory.mktemp("launch"))]
    if not system_launch_ros():
        vendored = launch_prefix()
        if vendored is None:
            pytest.skip("no ROS 2 launch here: neither a system install nor ../shared/vendor/ros2_launch")
        prefixes.append(vendored)
    return installed_env(*prefixes, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", OMP_NUM_THREADS="1")


class Launch:
    """`ros2 launch lisa_ros lisa.launch.py ARGS` in a process of its own, on a private ROS domain."""

    def __init__(self, env: dict, tmp_path, *args: str):
        self.domain, self._fd = claim_domain()
        self.log_path = tmp_path / f"launch-{self.domain}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCH, *args], cwd=tmp_path, stdout=self._log,
                                     stderr=subprocess.STDOUT, env={**env, "ROS_DOMAIN_ID": str(self.domain)})
        self.peer = Peer(self.domain)

    def log(self) -> str:
        return self.log_path.read_text()

    def state(self, node: str) -> str:
        return self.peer.call(GetState, f"{node}/get_state", GetState.Request(), 90).current_state.label

    def change(self, node: str, transition: int) -> bool:
        req = ChangeState.Request()
        req.transition.id = transition
        return self.peer.call(ChangeState, f"{node}/change_state", req, 60).success

    def stop(self) -> int:
        """SIGINT, as Ctrl-C in a terminal: launch forwards it to the node and both end."""
        self.peer.close()
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log.close()
            os.close(self._fd)
        return code


def test_arguments_mirror_the_node_parameters(env, tmp_path):
    """One launch argument per node parameter (same default, same description), read from the real launch
    description."""
    code = ("import json; from launch.actions import DeclareLaunchArgument; from ros2launch.api import "
            "get_share_file_path_from_package as find; from launch.launch_description_sources import "
            "get_launch_description_from_python_launch_file as load; d = load(find(package_name='lisa_ros', "
            "file_name='lisa.launch.py')); print(json.dumps({a.name: [a.default_value[0].text, a.description] "
            "for a in d.entities if isinstance(a, DeclareLaunchArgument)}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    declared = json.loads(out.stdout)
    assert set(declared) == set(PARAMETERS) | {"namespace", "node_name", "rviz"}
    for name, p in PARAMETERS.items():
        default = str(p.default).lower() if isinstance(p.default, bool) else str(p.default)
        assert declared[name] == [default, p.description], name


def test_autostart_namespace_and_typed_arguments(env, tmp_path):
    launch = Launch(env, tmp_path, *QUICK, "namespace:=/robot1", "max_new_tokens:=7", "sync_tolerance:=0.25",
                    "publish_overlay:=false", "depth_topic:=none", "vision_tower:=none")
    node = "/robot1/lisa_node"
    try:
        assert launch.state(node) == "active", launch.log()
        names = ["max_new_tokens", "sync_tolerance", "publish_overlay", "depth_topic", "model"]
        values = launch.peer.call(GetParameters, f"{node}/get_parameters", GetParameters.Request(names=names)).values
        got = {n: (v.type, v.integer_value, v.double_value, v.bool_value, v.string_value) for n, v in zip(names, values)}
        assert got["max_new_tokens"][:2] == (ParameterType.PARAMETER_INTEGER, 7)
        assert got["sync_tolerance"][0] == ParameterType.PARAMETER_DOUBLE and got["sync_tolerance"][2] == 0.25
        assert got["publish_overlay"][0] == ParameterType.PARAMETER_BOOL and got["publish_overlay"][3] is False
        assert got["depth_topic"] == (ParameterType.PARAMETER_STRING, 0, 0.0, False, "none")
        graph = launch.peer.node.get_subscriptions_info_by_topic
        assert graph("/camera/color/image_raw") and not graph("/camera/depth/image_raw")  # none = not subscribed
        res = launch.peer.call(ReasonSegment, f"{node}/reason_segment",
                               ReasonSegment.Request(instruction="the cup", image=solid_image(32, 48)[1]), 60)
        assert res.success and res.generated_tokens <= 7
    finally:
        code = launch.stop()
    assert code == 0 and "process has finished cleanly" in launch.log(), launch.log()[-3000:]
    # autostart: the node configured itself, so the launch file's configure event (UnlessCondition) never fired
    assert "Failed to make transition" not in launch.log() and "configured" in launch.log()


def test_autostart_off_and_a_manual_deactivate_stays(env, tmp_path):
    """autostart:=false: the launch file configures then activates; a later deactivate is the user's and holds."""
    launch = Launch(env, tmp_path, *QUICK, "autostart:=false")
    node = "/lisa_node"
    try:
        deadline = time.monotonic() + 90
        while launch.state(node) != "active" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert launch.state(node) == "active", launch.log()
        assert launch.change(node, Transition.TRANSITION_DEACTIVATE)
        time.sleep(4.0)  # the old handler re-activated within a second
        assert launch.state(node) == "inactive", launch.log()[-2000:]
    finally:
        code = launch.stop()
    assert code == 0, launch.log()[-3000:]


def test_rviz_only_when_asked(env, tmp_path):
    """rviz:=true starts rviz2 (not installed here, so launch reports it missing); rviz:=false never looks for it."""
    launch = Launch(env, tmp_path, *QUICK, "rviz:=true", "autostart:=false")
    try:
        deadline = time.monotonic() + 60
        while "rviz2" not in launch.log() and launch.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "rviz2" in launch.log(), launch.log()
    finally:
        launch.stop()
    quiet = Launch(env, tmp_path, *QUICK)
    try:
        assert quiet.state("/lisa_node") == "active"
    finally:
        assert quiet.stop() == 0
    assert "rviz2" not in quiet.log(), quiet.log()
