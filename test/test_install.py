"""The robot path: this package built with ament cmake as colcon builds it (LISA_ROS_INSTALL_PYTHON_SOURCES=ON),
installed into a prefix, and the node started from that prefix - with the source tree off the path."""
import os
import re
import stat
import subprocess
import sys

import pytest

from lisa_ros.srv import ReasonSegment
from node_harness import Peer, claim_domain, solid_image
from ros_install import ROOT, SITE, installed_env, lisa_prefix


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    return lisa_prefix(tmp_path_factory.mktemp("robot"))


def test_install_holds_what_ros2_run_and_launch_need(prefix):
    for exe in ("lisa_node", "scene_player"):
        path = prefix / "lib" / "lisa_ros" / exe
        assert path.is_file() and path.stat().st_mode & stat.S_IXUSR, path
    share = prefix / "share" / "lisa_ros"
    for f in ("package.xml", "launch/lisa.launch.py", "launch/lisa.rviz", "config/fastdds_large_data.xml"):
        assert (share / f).is_file(), f
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "lisa_ros").is_file()
    site = prefix / SITE
    for f in ("lisa_ros/node.py", "lisa_ros/action_server.py", "lisa_ros/msg/_segmentation_result.py",
              "lisa_ros/srv/_reason_segment.py", "lisa_ros/action/_reason_segment.py", "lisa_model/predictor.py",
              "lisa_model/modeling/sam.py", "training/train.py"):
        assert (site / f).is_file(), f
    assert list((prefix / "lib").glob("liblisa_ros__rosidl_typesupport_c.so"))
    # every interface file of the repository is built (a file missing from CMakeLists.txt would not be)
    for path in [*ROOT.glob("msg/*.msg"), *ROOT.glob("srv/*.srv"), *ROOT.glob("action/*.action")]:
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", path.stem).lower()
        assert (site / "lisa_ros" / path.parent.name / f"_{snake}.py").is_file(), path


def test_node_runs_from_the_install(prefix, tmp_path):
    env = installed_env(prefix)
    where = subprocess.run([sys.executable, "-c", "import lisa_ros.node, lisa_model, lisa_ros.srv as s; "
                            "print(lisa_ros.node.__file__, lisa_model.__file__, s.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    assert all(path.startswith(str(prefix)) for path in where.stdout.split()), where.stdout  # not the source tree
    domain, fd = claim_domain()
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", OMP_NUM_THREADS="1")
    log = open(tmp_path / "node.log", "w")
    # the installed executable itself, as `ros2 run lisa_ros lisa_node` starts it (its shebang finds python3)
    node = subprocess.Popen([str(prefix / "lib" / "lisa_ros" / "lisa_node"), "--ros-args", "-p", "model:=tiny-random",
                             "-p", "warmup:=false"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    peer = Peer(domain)
    try:
        rgb, image = solid_image(48, 64)
        res = peer.call(ReasonSegment, "/lisa_node/reason_segment",
                        ReasonSegment.Request(instruction="where can I sit", image=image, max_new_tokens=6), 120)
        assert res.success and res.generated_tokens >= 1, res.message
    finally:
        peer.close()
        node.send_signal(2)
        assert node.wait(timeout=20) == 0, (tmp_path / "node.log").read_text()[-2000:]
        log.close()
        os.close(fd)
