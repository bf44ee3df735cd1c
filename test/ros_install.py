"""Install prefixes for tests that use lisa_ros the way a robot does, built once and cached between runs.

* `lisa_prefix()`: this package built with ament cmake (LISA_ROS_INSTALL_PYTHON_SOURCES=ON, what colcon builds)
  and installed into a prefix: lib/lisa_ros/<executables>, share/lisa_ros/, the ament index marker, and one
  Python package lisa_ros holding the generated interfaces and the hand-written modules, plus lisa_model and
  training. The cmake build folder is cached (keyed on the interface sources); the install is fresh per session.
* `launch_prefix()`: the ROS 2 launch stack. A system install (launch_ros importable without help) is used as is;
  otherwise the upstream Jazzy sources vendored beside the project (../shared/vendor/ros2_launch) are installed
  into a cached prefix - never into the project's venv - with composition_interfaces built like our interfaces.
  None when neither exists (tests then skip and say why).
* `installed_env(...)`: the environment a sourced install gives a process.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
VENDOR = ROOT.parent / "shared" / "vendor" / "ros2_launch"
CACHE = Path(tempfile.gettempdir()) / "lisa_ros_test_install"
SITE = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
_LAUNCH_PACKAGES = ("osrf_pycommon", "launch", "launch_ros", "ros2launch")


def _digest(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p.name).encode())
        h.update(p.read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()[:16]


def _cmake_env() -> dict:
    env = dict(os.environ)
    env.update(AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV),
               LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(VENV / "lib"), env.get("LD_LIBRARY_PATH")])))
    return env


def _run(cmd: list, log: Path, **kwargs) -> None:
    with open(log, "w") as out:
        if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=_cmake_env(), **kwargs).returncode:
            raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{log.read_text()[-3000:]}")


def cmake_install(source: Path, build: Path, prefix: Path, *options: str) -> Path:
    """Configure (once), build and install an ament cmake package with the venv's ROS wheels and Python."""
    build.mkdir(parents=True, exist_ok=True)
    if not (build / "CMakeCache.txt").is_file():
        _run(["cmake", "-S", source, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_TESTING=OFF",
              f"-DPython3_EXECUTABLE={sys.executable}", *options], build / "configure.log")
    _run(["cmake", "--build", build, "-j", "2"], build / "build.log")
    _run(["cmake", "--install", build, "--prefix", prefix], build / "install.log")
    return prefix


# What a robot's workspace holds of this repository (a clone in ws/src/lisa_ros minus what the build ignores).
_PACKAGE_ITEMS = ("CMakeLists.txt", "package.xml", "msg", "srv", "action", "lisa_ros", "lisa_model", "training",
                  "scripts", "launch", "config")


def lisa_prefix(session_dir: Path) -> Path:
    """This package, built as a robot's colcon would and installed into `session_dir`/install.

    Built from a copy in a workspace of its own, as on a robot: cmake refuses exported include folders inside the
    source tree, and here the venv (numpy's headers) lives inside the repository."""
    sources = [*ROOT.glob("msg/*.msg"), *ROOT.glob("srv/*.srv"), *ROOT.glob("action/*.action"),
               ROOT / "CMakeLists.txt", ROOT / "package.xml"]
    work = CACHE / f"lisa_ros-{_digest(sources)}"
    src = work / "src" / "lisa_ros"
    for item in _PACKAGE_ITEMS:  # copy2 keeps times: unchanged files rebuild nothing
        if (ROOT / item).is_dir():
            shutil.copytree(ROOT / item, src / item, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / item, src / item)
    return cmake_install(src, work / "build", session_dir / "install", "-DLISA_ROS_INSTALL_PYTHON_SOURCES=ON",
                         f"-DPYTHON_INSTALL_DIR={SITE}")


def system_launch_ros() -> bool:
    """launch_ros importable from a system ROS 2 install (nothing of ours on the path)."""
    probe = subprocess.run([sys.executable, "-c", "import launch_ros, ros2launch.api"], capture_output=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    return probe.returncode == 0


def launch_prefix() -> Path | None:
    """A prefix holding launch, launch_ros, ros2launch, osrf_pycommon and composition_interfaces."""
    archives = sorted(VENDOR.glob("*.tar.gz"))
    if not archives:
        return None
    prefix = CACHE / f"ros2_launch-{_digest(archives)}"
    if (prefix / ".complete").is_file():
        return prefix
    shutil.rmtree(prefix, ignore_errors=True)
    src = prefix / "src"
    src.mkdir(parents=True)
    for archive in archives:
        with tarfile.open(archive) as tar:
            tar.extractall(src, filter="data")
    for name in _LAUNCH_PACKAGES:  # in dependency order
        folder = next(p.parent for p in src.rglob("setup.py")
                      if p.parent.name == name or p.parent.name.startswith(name + "-"))  # osrf_pycommon-2.1.6
        _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--prefix",
              prefix, folder], prefix / f"pip-{name}.log")
    interfaces = next(src.rglob("composition_interfaces/CMakeLists.txt")).parent
    cmake_install(interfaces, prefix / "build-composition", prefix, f"-DPYTHON_INSTALL_DIR={SITE}")
    (prefix / ".complete").write_text("ok\n")
    return prefix


def installed_env(*prefixes: Path, **extra: str) -> dict:
    """The environment sourcing these install prefixes gives (first wins), over the venv's ROS wheels; the
    source tree is NOT on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(
        AMENT_PREFIX_PATH=os.pathsep.join([*map(str, prefixes), str(VENV)]),
        PYTHONPATH=os.pathsep.join(str(p / SITE) for p in prefixes),
        # the wheels' start-up put their own library folders on this path: keep them
        LD_LIBRARY_PATH=os.pathsep.join([*(str(p / "lib") for p in prefixes), env.get("LD_LIBRARY_PATH", "")]),
        PATH=os.pathsep.join([str(VENV / "bin"), env.get("PATH", "")]),  # `#!/usr/bin/env python3` = the venv's
        **extra)
    return env

