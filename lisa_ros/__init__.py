"""lisa_ros: LISA reasoning segmentation on ROS 2 camera frames (node, image conversion, 3D geometry, scenes).

The subpackages `lisa_ros.msg` and `lisa_ros.srv` are generated from msg/ and srv/ by rosidl and live in a
different folder from this file in a development checkout, so this package spans two folders:

* colcon / a robot (CMakeLists.txt, LISA_ROS_INSTALL_PYTHON_SOURCES=ON): this file is installed into the
  generated package's folder, which then holds everything; nothing below adds anything.
* development (scripts/build_interfaces.sh): the generated package is installed to
  <venv>/lib/lisa_ros_generated_py/lisa_ros, outside site-packages on purpose - a second `lisa_ros` there would
  shadow this source tree. It is appended to __path__ here, after this folder, so hand-written modules always
  come from the source tree and only msg/srv (and their C extensions) come from the build.
* any other split install (e.g. generated package on PYTHONPATH from an overlay): pkgutil.extend_path picks up
  every other `lisa_ros` folder on sys.path, again after this one.
"""
import os as _os
import sys as _sys
from pkgutil import extend_path as _extend_path

__path__ = _extend_path(__path__, __name__)

_GENERATED = _os.path.join(_sys.prefix, "lib", "lisa_ros_generated_py", __name__)  # see build_interfaces.sh
if not any(_os.path.isdir(_os.path.join(p, "msg")) for p in __path__) and _os.path.isdir(_GENERATED):
    __path__.append(_GENERATED)
