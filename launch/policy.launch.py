"""Start policy_node with the installed config/policy.yaml.

Launch arguments: ``model`` (ONNX path, empty = packaged default), ``control_rate_hz``,
``execution`` (stream | trajectory), and remaps ``joint_states_topic``, ``goal_topic``,
``commands_topic``, ``joint_trajectory_topic``.

    ros2 launch flow_policy_ros policy.launch.py execution:=trajectory model:=/path/policy.onnx
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    params_file = os.path.join(get_package_share_directory("flow_policy_ros"), "config", "policy.yaml")
    arguments = [
        DeclareLaunchArgument("model", default_value="", description="ONNX policy; empty = packaged default model"),
        DeclareLaunchArgument("control_rate_hz", default_value="50.0", description="control tick rate (Hz)"),
        DeclareLaunchArgument("execution", default_value="stream", description="stream | trajectory"),
        DeclareLaunchArgument("joint_states_topic", default_value="joint_states"),
        DeclareLaunchArgument("goal_topic", default_value="goal"),
        DeclareLaunchArgument("commands_topic", default_value="commands"),
        DeclareLaunchArgument("joint_trajectory_topic", default_value="joint_trajectory"),
    ]
    node = Node(
        package="flow_policy_ros",
        executable="policy_node",
        name="flow_policy_node",
        output="screen",
        emulate_tty=True,
        parameters=[
            params_file,
            {
                "model_path": ParameterValue(LaunchConfiguration("model"), value_type=str),
                "control_rate_hz": ParameterValue(LaunchConfiguration("control_rate_hz"), value_type=float),
                "execution": ParameterValue(LaunchConfiguration("execution"), value_type=str),
            },
        ],
        remappings=[
            ("joint_states", LaunchConfiguration("joint_states_topic")),
            ("goal", LaunchConfiguration("goal_topic")),
            ("commands", LaunchConfiguration("commands_topic")),
            ("joint_trajectory", LaunchConfiguration("joint_trajectory_topic")),
        ],
    )
    return LaunchDescription([*arguments, node])
