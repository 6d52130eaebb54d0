"""sim_node (PyBullet iiwa) + policy_node in closed loop, parameters from the installed config/.

Parameters come from ``sim_params_file`` and ``policy_params_file`` (defaults: the installed
``config/sim.yaml`` and ``config/policy.yaml``, the files ``flow-policy demo`` uses). Each of
``task``, ``episodes``, ``record_path`` (sim_node) and ``model``, ``execution``,
``control_rate_hz``, ``guidance_scale``, ``autostart``, ``use_sim_time`` (policy_node) overrides
its parameter only when given.

The launch ends with sim_node: after its configured episodes (``episodes:=N``, or the seeds in
sim.yaml) it exits 0 and the launch shuts down with status 0; a node that exits with an error
ends the launch with status 1 and a last line naming that node and its reason. With neither episodes nor seeds it runs until Ctrl-C.

    ros2 launch flow_policy_ros sim_demo.launch.py execution:=trajectory episodes:=10

DDS: set ROS_DOMAIN_ID / ROS_AUTOMATIC_DISCOVERY_RANGE in the shell as usual; the nodes do not.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from flow_policy_ros.ros.launch_support import (
    POLICY_ARGUMENTS,
    SIM_ARGUMENTS,
    declare_arguments,
    end_launch_with,
    given_values,
    parameter_overrides,
)
from launch import LaunchDescription


def _nodes(context):
    actions = []
    for executable, name, params_file, arguments in (
        ("sim_node", "sim_node", "sim_params_file", SIM_ARGUMENTS),
        ("policy_node", "flow_policy_node", "policy_params_file", POLICY_ARGUMENTS),
    ):
        overrides = parameter_overrides(arguments, given_values(context, arguments))
        node = Node(
            package="flow_policy_ros",
            executable=executable,
            name=name,
            output="screen",
            emulate_tty=True,
            parameters=[LaunchConfiguration(params_file).perform(context), *([overrides] if overrides else [])],
        )
        actions += [node, *end_launch_with(node, name)]
    return actions


def generate_launch_description() -> LaunchDescription:
    config_dir = os.path.join(get_package_share_directory("flow_policy_ros"), "config")
    return LaunchDescription([
        DeclareLaunchArgument("sim_params_file", default_value=os.path.join(config_dir, "sim.yaml"),
                              description="sim_node parameter file"),
        DeclareLaunchArgument("policy_params_file", default_value=os.path.join(config_dir, "policy.yaml"),
                              description="policy_node parameter file"),
        *declare_arguments(SIM_ARGUMENTS),
        *declare_arguments(POLICY_ARGUMENTS),
        OpaqueFunction(function=_nodes),
    ])
