"""Fixtures for tests that use real DDS or the synthetic scene. Import the ones a test module needs:

    from ros_fixtures import ros_context, ros_domain, synthetic_scene  # noqa: F401

ros_domain: a ROS_DOMAIN_ID of its own for the test (and for subprocesses it starts, via the environment), held
with a lock file so concurrent test runs on the same machine never share one.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_LOCK_DIR = Path(tempfile.gettempdir()) / "lisa_ros_test_domains"
# The shipped Fast DDS profile, as demo.sh and the README set it: without it camera-sized best-effort frames go over
# UDP in fragments and most are lost (bench/bench_node.py; a loaded CI machine once got none for 30 s).
LARGE_DATA = {"FASTDDS_DEFAULT_PROFILES_FILE": str(ROOT / "config" / "fastdds_large_data.xml")}
_DOMAINS = range(1, 101)  # 0 is everybody's default; >101 collides with Linux ephemeral ports at default settings


def claim_domain() -> tuple[int, int]:
    """(domain id, lock file descriptor): the first free id, starting at a pid-dependent one."""
    _LOCK_DIR.mkdir(exist_ok=True)
    start = os.getpid() % len(_DOMAINS)
    for k in range(len(_DOMAINS)):
        domain = _DOMAINS[(start + k) % len(_DOMAINS)]
        fd = os.open(_LOCK_DIR / f"{domain}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return domain, fd
        except OSError:
            os.close(fd)
    raise RuntimeError("no free ROS domain id")


@pytest.fixture
def ros_domain(monkeypatch) -> int:
    """A private ROS_DOMAIN_ID, exported to this process's environment (and so to subprocesses) for the test."""
    domain, fd = claim_domain()
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    try:
        yield domain
    finally:
        os.close(fd)  # releases the lock


@pytest.fixture
def ros_context(ros_domain):
    """An initialised rclpy Context of its own on the test's domain (shut down afterwards)."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain)
    try:
        yield context
    finally:
        context.try_shutdown()


@pytest.fixture(scope="session")
def synthetic_scene(tmp_path_factory) -> Path:
    """A 4-frame synthetic ScanNet-style scene (colour 324x242, depth 160x120), generated once per session."""
    from lisa_ros.scenes.synthetic import generate_scene

    return generate_scene(tmp_path_factory.mktemp("scene") / "scene0000_00", num_frames=4)


def subprocess_env(**extra: str) -> dict:
    """The environment for a child Python: the source tree importable, plus `extra`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(extra)
    return env
