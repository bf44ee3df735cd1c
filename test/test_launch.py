"""launch/lisa.launch.py stays in step with the node's parameters.

`launch` and `launch_ros` cannot be installed here (they come with a ROS install), so the file is executed
against small recording stand-ins of the few classes it uses: every action it builds is kept, and the test
checks the launch arguments and node parameters against lisa_ros.parameters.PARAMETERS - the list the node
itself declares. The stand-ins only record constructor arguments; nothing of launch's behaviour is imitated.
"""
import ast
import importlib.util
import re
import sys
import types

import pytest

from conftest import ROOT
from lisa_ros.parameters import PARAMETERS

LAUNCH = ROOT / "launch" / "lisa.launch.py"
EXTRA_ARGUMENTS = {"namespace", "node_name", "rviz"}


class Recorded:
    """Any launch class: remembers how it was constructed."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _stand_in_modules() -> dict[str, types.ModuleType]:
    tree = ast.parse(LAUNCH.read_text())
    modules: dict[str, types.ModuleType] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] in ("launch", "launch_ros"):
            parts = node.module.split(".")
            for i in range(1, len(parts) + 1):
                modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
            mod = modules[node.module]
            for alias in node.names:
                setattr(mod, alias.name, type(alias.name, (Recorded,), {}))
    return modules


@pytest.fixture(scope="module")
def description(monkeypatch_module):
    for name, module in _stand_in_modules().items():
        monkeypatch_module.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("lisa_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def actions(description, kind: str) -> list:
    return [a for a in description.args[0] if type(a).__name__ == kind]


def test_one_launch_argument_per_parameter(description):
    declared = {a.args[0]: a.kwargs for a in actions(description, "DeclareLaunchArgument")}
    assert set(declared) == set(PARAMETERS) | EXTRA_ARGUMENTS
    for name, p in PARAMETERS.items():
        default = str(p.default).lower() if isinstance(p.default, bool) else str(p.default)
        assert declared[name]["default_value"] == default, name
        assert declared[name]["description"] == p.description


def test_node_gets_every_parameter_typed(description):
    (node,) = actions(description, "LifecycleNode")
    assert (node.kwargs["package"], node.kwargs["executable"]) == ("lisa_ros", "lisa_node")
    (params,) = node.kwargs["parameters"]
    assert set(params) == set(PARAMETERS)
    for name, value in params.items():
        assert type(value).__name__ == "ParameterValue"
        (config,) = value.args
        assert type(config).__name__ == "LaunchConfiguration" and config.args == (name,)
        assert value.kwargs["value_type"] is type(PARAMETERS[name].default)


def test_node_is_brought_to_active(description):
    """autostart:=true: the node activates itself; autostart:=false: the launch file configures then activates."""
    emits = actions(description, "EmitEvent")
    handlers = actions(description, "RegisterEventHandler")
    assert len(emits) == 1 and len(handlers) == 1
    configure = emits[0].kwargs["event"]
    assert configure.kwargs["transition_id"] == 1  # lifecycle_msgs Transition.TRANSITION_CONFIGURE
    (on_inactive,) = handlers[0].args
    assert on_inactive.kwargs["goal_state"] == "inactive"
    (activate,) = on_inactive.kwargs["entities"]
    assert activate.kwargs["event"].kwargs["transition_id"] == 3  # TRANSITION_ACTIVATE
    assert "autostart" in PARAMETERS and PARAMETERS["autostart"].default is True


def test_installed_where_ros2_launch_finds_it():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"install\(\s*DIRECTORY\s+launch", cmake), "launch/ must be installed to share/lisa_ros"
    assert (ROOT / "launch" / "lisa.rviz").is_file()
    assert re.search(r"lisa_node", cmake) and (ROOT / "scripts" / "lisa_node").is_file()
