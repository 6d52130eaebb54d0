"""Read a string parameter of another running node (e.g. robot_state_publisher's ``robot_description``).

Through the node's standard ``<node>/get_parameters`` service (rcl_interfaces/srv/GetParameters),
as ``ros2 param get`` does, from a short-lived node in an rclpy context of its own, so a caller
that runs rclpy itself is not disturbed. DDS discovery follows the environment (ROS_DOMAIN_ID,
ROS_AUTOMATIC_DISCOVERY_RANGE), as for any ROS 2 tool.
"""

from __future__ import annotations

import rclpy
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.srv import GetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from flow_policy_ros.errors import UsageError


def read_string_parameter(node_name: str, parameter: str, timeout_s: float = 5.0) -> str:
    """The value of string parameter ``parameter`` of the running node ``node_name`` (e.g. '/robot_state_publisher').

    Raises:
        UsageError: no such service within ``timeout_s`` (s), no answer, or the parameter is unset or
            not a string; the message names the node, the service and the parameter.
    """
    fqn = node_name if node_name.startswith("/") else f"/{node_name}"
    service = f"{fqn.rstrip('/')}/get_parameters"
    context = Context()
    rclpy.init(context=context)
    node = None
    try:
        node = Node("flow_policy_robot_config", context=context)
        client = node.create_client(GetParameters, service)
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise UsageError(f"--from-parameter {node_name}: no service {service} within {timeout_s:g} s "
                             "(is the node running, in this ROS_DOMAIN_ID?)")
        future = client.call_async(GetParameters.Request(names=[parameter]))
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        executor.spin_until_future_complete(future, timeout_sec=timeout_s)
        executor.shutdown()
        if not future.done() or future.result() is None:
            raise UsageError(f"--from-parameter {node_name}: {service} gave no answer within {timeout_s:g} s")
        values = future.result().values
        if not values or values[0].type != ParameterType.PARAMETER_STRING:
            kind = "not set" if not values or values[0].type == ParameterType.PARAMETER_NOT_SET else "not a string"
            raise UsageError(f"--from-parameter {node_name}: parameter {parameter!r} is {kind}")
        return values[0].string_value
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
