#!/usr/bin/env bash
# Build this package's msg/srv interfaces (lisa_ros/msg, lisa_ros/srv) with the ROS 2 wheels in .venv and install
# them into the venv, so `from lisa_ros.msg import SegmentationResult` works from .venv/bin/python.
# Idempotent: skipped when the interface files, CMakeLists.txt, package.xml and this script are unchanged and the
# result is still installed. Called by scripts/setup.sh; FORCE=1 rebuilds.
#
# Where things go (prefix = the venv):
#   .venv/lib/liblisa_ros__rosidl_*.so        C type support: the wheels' bootstrapper puts .venv/lib on the
#                                              library path, where rosidl looks for type support libraries.
#   .venv/lib/lisa_ros_generated_py/lisa_ros/  the generated Python (msg/, srv/, C extensions). Deliberately NOT in
#                                              site-packages: a second `lisa_ros` package there would shadow the
#                                              source tree's hand-written lisa_ros/. lisa_ros/__init__.py adds this
#                                              folder to the package's __path__ instead.
#   .venv/share/lisa_ros/, ament index entry  so ament_index finds the package (AMENT_PREFIX_PATH=.venv).
# A colcon build of the same CMakeLists.txt (LISA_ROS_INSTALL_PYTHON_SOURCES=ON, the default) installs generated and
# hand-written files into one ordinary lisa_ros package instead.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${VENV:-$root/.venv}"
py="$venv/bin/python"
build="$root/build/interfaces"
generated_py_dir="lib/lisa_ros_generated_py"  # relative to the venv; lisa_ros/__init__.py knows this name
stamp="$venv/.lisa_ros_interfaces.sha256"

[ -x "$py" ] || { echo "[interfaces] no venv at $venv (run scripts/setup.sh)" >&2; exit 1; }
mkdir -p "$build"
exec 9>"$build/.lock" && flock 9  # one build at a time (parallel setup.sh runs share build/ and the venv)

inputs=(msg/*.msg srv/*.srv action/*.action CMakeLists.txt package.xml "${BASH_SOURCE[0]}")
want="$( (cat "${inputs[@]}"; echo "$venv") | sha256sum | cut -d' ' -f1)"
installed="$venv/$generated_py_dir/lisa_ros/srv/_reason_segment.py"
if [ "${FORCE:-0}" != 1 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && [ -f "$installed" ]; then
  echo "[interfaces] up to date"
  exit 0
fi
echo "[interfaces] building msg/srv into $venv (about 30 s)"

# Fix 1: cmake and ament look for ROS packages in the venv.
export AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"
# The wheels' bootstrapper re-executes Python with this set; cmake's own Python calls need it too.
export LD_LIBRARY_PATH="$venv/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# Fix 2: the wheels' *_rosidl_generator_pyExport.cmake carry the wheel build machine's Python and NumPy include
# folders; point them at this interpreter's. Only lines naming a folder that does not exist here are rewritten,
# so re-running changes nothing.
"$py" - "$venv/share" <<'PY'
import pathlib, re, sys, sysconfig
import numpy
good = f'{sysconfig.get_paths()["include"]};{numpy.get_include()}'
pattern = re.compile(r'INTERFACE_INCLUDE_DIRECTORIES "([^"]*)"')
for path in pathlib.Path(sys.argv[1]).glob("*/cmake/*_rosidl_generator_pyExport.cmake"):
    text = path.read_text()
    def fix(m):
        dirs = m.group(1).split(";")
        if all(pathlib.Path(d).is_dir() for d in dirs if d):
            return m.group(0)
        return f'INTERFACE_INCLUDE_DIRECTORIES "{good}"'
    new = pattern.sub(fix, text)
    if new != text:
        path.write_text(new)
        print(f"[interfaces] fixed include folders in {path.name}")
PY

# Fix 3: the venv's interpreter (headers, numpy) for the generators and the Python extensions.
# Stale generated files of removed interfaces must not linger in the install.
rm -rf "${venv:?}/$generated_py_dir/lisa_ros"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
  -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$py" \
  -DPYTHON_INSTALL_DIR="$generated_py_dir" -DLISA_ROS_INSTALL_PYTHON_SOURCES=OFF >"$build/configure.log" 2>&1 \
  || { cat "$build/configure.log" >&2; echo "[interfaces] cmake configure failed" >&2; exit 1; }
cmake --build "$build" -j "${BUILD_JOBS:-2}" >"$build/build.log" 2>&1 \
  || { tail -50 "$build/build.log" >&2; echo "[interfaces] build failed (log: $build/build.log)" >&2; exit 1; }
cmake --install "$build" >"$build/install.log" 2>&1 \
  || { tail -30 "$build/install.log" >&2; echo "[interfaces] install failed" >&2; exit 1; }

# Check that the generated types import (through the source tree's lisa_ros) and their type support loads.
(cd "$root" && "$py" -c "
from rclpy.serialization import serialize_message
from lisa_ros.msg import SegmentationResult, Target3D
from lisa_ros.srv import ReasonSegment
from lisa_ros.action import ReasonSegment as ReasonSegmentAction
serialize_message(SegmentationResult()); serialize_message(ReasonSegment.Request())
serialize_message(ReasonSegmentAction.Feedback())
") || { echo "[interfaces] built, but the generated types do not import" >&2; exit 1; }
echo "$want" > "$stamp"
echo "[interfaces] installed lisa_ros msg/srv into $venv"
