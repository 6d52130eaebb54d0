"""sim_node (PyBullet iiwa) + policy_node in closed loop, parameters from the installed config/.

Parameters come from ``share/flow_policy_ros/config/sim.yaml`` and ``config/policy.yaml``
(the files ``flow-policy demo`` uses), with launch arguments on top: ``model`` (ONNX path,
empty = packaged default), ``execution`` (stream | trajectory), ``task`` (reach |
reach_around), ``episodes`` (0 = forever) and ``record_path`` (one rosbag2 per episode).

    ros2 launch flow_policy_ros sim_demo.launch.py execution:=trajectory episodes:=10

DDS: set ROS_DOMAIN_ID / ROS_AUTOMATIC_DISCOVERY_RANGE in the shell as usual; the nodes do not.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    config_dir = os.path.join(get_package_share_directory("flow_policy_ros"), "config")
    arguments = [
        DeclareLaunchArgument("model", default_value="", description="ONNX policy; empty = packaged default model"),
        DeclareLaunchArgument("execution", default_value="stream", description="stream | trajectory"),
        DeclareLaunchArgument("task", default_value="reach", description="reach | reach_around"),
        DeclareLaunchArgument("episodes", default_value="0", description="episodes to run; 0 = forever"),
        DeclareLaunchArgument("record_path", default_value="", description="directory for per-episode rosbag2; empty = off"),
    ]
    sim = Node(
        package="flow_policy_ros",
        executable="sim_node",
        name="sim_node",
        output="screen",
        emulate_tty=True,
        parameters=[
            os.path.join(config_dir, "sim.yaml"),
            {
                "task": ParameterValue(LaunchConfiguration("task"), value_type=str),
                "episodes": ParameterValue(LaunchConfiguration("episodes"), value_type=int),
                "record_path": ParameterValue(LaunchConfiguration("record_path"), value_type=str),
            },
        ],
    )
    policy = Node(
        package="flow_policy_ros",
        executable="policy_node",
        name="flow_policy_node",
        output="screen",
        emulate_tty=True,
        parameters=[
            os.path.join(config_dir, "policy.yaml"),
            {
                "model_path": ParameterValue(LaunchConfiguration("model"), value_type=str),
                "execution": ParameterValue(LaunchConfiguration("execution"), value_type=str),
            },
        ],
    )
    return LaunchDescription([*arguments, sim, policy])
