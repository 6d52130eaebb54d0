"""Start policy_node (a managed lifecycle node) with the installed config/policy.yaml.

Parameters come from ``params_file`` (default: ``share/flow_policy_ros/config/policy.yaml``); each
of ``model``, ``execution``, ``control_rate_hz``, ``guidance_scale``, ``autostart``,
``use_sim_time`` and ``shadow`` overrides its parameter only when given. Remaps: ``joint_states_topic``,
``goal_topic``, ``commands_topic``, ``joint_trajectory_topic``.

With ``autostart`` (true in policy.yaml) the node configures and activates itself; with
``autostart:=false`` it waits unconfigured for ``ros2 lifecycle set /flow_policy_node configure``
(then ``activate``). If the node exits with an error (a bad model path, say) the launch ends with
status 1 and a last line naming the node and its reason (``flow_policy_node exited with status 1:
configure failed: ...``); the node logs the same reason at FATAL (``/rosout``, the ROS log files).
Ctrl-C stops the node through its shutdown transition (an empty trajectory in trajectory mode).

    ros2 launch flow_policy_ros policy.launch.py execution:=trajectory model:=/path/policy.onnx
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from flow_policy_ros.ros.launch_support import (
    POLICY_ARGUMENTS,
    POLICY_REMAPS,
    declare_arguments,
    end_launch_with,
    given_values,
    parameter_overrides,
)
from launch import LaunchDescription


def _policy_node(context):
    overrides = parameter_overrides(POLICY_ARGUMENTS, given_values(context, POLICY_ARGUMENTS))
    node = Node(
        package="flow_policy_ros",
        executable="policy_node",
        name="flow_policy_node",
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("params_file").perform(context), *([overrides] if overrides else [])],
        remappings=[(topic, LaunchConfiguration(argument)) for argument, topic in POLICY_REMAPS.items()],
    )
    return [node, *end_launch_with(node, "flow_policy_node")]


def generate_launch_description() -> LaunchDescription:
    params_file = os.path.join(get_package_share_directory("flow_policy_ros"), "config", "policy.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=params_file, description="policy_node parameter file"),
        *declare_arguments(POLICY_ARGUMENTS),
        *[DeclareLaunchArgument(argument, default_value=topic, description=f"topic for {topic}")
          for argument, topic in POLICY_REMAPS.items()],
        OpaqueFunction(function=_policy_node),
    ])
