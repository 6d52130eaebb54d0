"""The one ``main`` loop of this package's rclpy nodes: init, spin, clean shutdown.

Works on Humble, Jazzy and Kilted alike: KeyboardInterrupt and ExternalShutdownException are
normal shutdowns, and so are the RCLError ("context is not valid") and RuntimeError that rclpy
raises when SIGINT shuts the context down between two waits of the executor or during a take.
Bad input (``user_errors``, and rclpy's parameter type/range errors) is printed as one line and
gives exit status 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from flow_policy_ros.errors import one_line


def spin_node(
    name: str,
    make_node: Callable[[], Node],
    user_errors: tuple[type[BaseException], ...],
    on_created: Callable[[Node], None] | None = None,
    args: list[str] | None = None,
) -> int:
    """Run ``make_node()`` on a single-threaded executor until shutdown; returns the exit status.

    ``on_created`` runs on the executor's thread before spinning (e.g. to raise its priority).
    """
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        if on_created is not None:
            on_created(node)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (RCLError, RuntimeError):
        # SIGINT shuts the context down under the executor: rclpy then raises RCLError ("context is
        # not valid") or, from a message take in flight, RuntimeError ("Unable to convert call
        # argument"). Both are a clean shutdown; with the context still valid they are real errors.
        if rclpy.ok():
            raise
    except (*user_errors, ParameterException) as exc:  # bad input: one line, no traceback
        print(f"{name}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
