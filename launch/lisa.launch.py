"""ros2 launch lisa_ros lisa.launch.py [model:=xinlai/LISA-7B-v1 device:=cuda dtype:=bfloat16 ...]

Starts lisa_node as a managed (lifecycle) node and brings it to active: by itself when autostart:=true (the
default), or from this launch file (configure, then activate) when autostart:=false. Every node parameter is a
launch argument of the same name - the list comes from lisa_ros.parameters, so the two cannot drift apart.
Optional: rviz:=true opens RViz with launch/lisa.rviz (overlay image, markers, point cloud).
Optional string parameters (vision_tower, base_model, conv_template, depth_topic, camera_info_topic,
depth_camera_info_topic) take `none` for "not set": ros2 launch refuses an empty value (`depth_topic:=`).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.conditions import IfCondition, UnlessCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

from lisa_ros.parameters import PARAMETERS


def _launch_default(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def generate_launch_description() -> LaunchDescription:
    args = [DeclareLaunchArgument(name, default_value=_launch_default(p.default), description=p.description)
            for name, p in PARAMETERS.items()]
    args += [
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("node_name", default_value="lisa_node", description="name of the node"),
        DeclareLaunchArgument("rviz", default_value="false", description="also start RViz with lisa.rviz"),
    ]
    # Typed parameter values: launch arguments are strings, and '' or 'true' must not be re-parsed as YAML.
    parameters = {name: ParameterValue(LaunchConfiguration(name), value_type=type(p.default))
                  for name, p in PARAMETERS.items()}
    node = LifecycleNode(
        package="lisa_ros", executable="lisa_node", name=LaunchConfiguration("node_name"),
        namespace=LaunchConfiguration("namespace"), parameters=[parameters], output="screen", emulate_tty=True,
    )
    manual = UnlessCondition(LaunchConfiguration("autostart"))
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                            transition_id=Transition.TRANSITION_CONFIGURE), condition=manual)
    # Only the end of configuring: "inactive" is also where a manual deactivate ends, which must stay inactive.
    activate_when_configured = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                              transition_id=Transition.TRANSITION_ACTIVATE))]),
        condition=manual)
    rviz = Node(package="rviz2", executable="rviz2", name="lisa_rviz", output="log",
                arguments=["-d", PathJoinSubstitution([FindPackageShare("lisa_ros"), "launch", "lisa.rviz"])],
                condition=IfCondition(LaunchConfiguration("rviz")))
    return LaunchDescription([*args, node, activate_when_configured, configure, rviz])
