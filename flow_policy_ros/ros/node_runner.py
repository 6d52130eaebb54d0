"""The one ``main`` loop of this package's rclpy nodes: init, spin, clean shutdown.

Works on Humble, Jazzy and Kilted alike: KeyboardInterrupt and ExternalShutdownException are
normal shutdowns, and so are the RCLError ("context is not valid") and RuntimeError that rclpy
raises when SIGINT shuts the context down between two waits of the executor or during a take.
Bad input (``user_errors``, and rclpy's parameter type/range errors) is printed as one line and
gives exit status 1.

Executors (:data:`EXECUTORS`): rclpy's ``SingleThreadedExecutor`` (the default) or the
experimental C++ ``rclpy.experimental.EventsExecutor``, which takes a message to its callback
with less Python per message (measured in ``flow-policy bench --ros``; see README). The latter
has no guard conditions, and in the rclpy 9.1 wheels its ``spin()`` never fires timers, so it is
spun with ``spin_once`` in a loop.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.exceptions import ParameterException
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from flow_policy_ros.errors import one_line

EXECUTORS: tuple[str, ...] = ("single_threaded", "events")


def create_executor(kind: str) -> Executor:
    """A fresh executor of ``kind`` (one of :data:`EXECUTORS`)."""
    if kind == "single_threaded":
        return SingleThreadedExecutor()
    if kind == "events":
        from rclpy.experimental import EventsExecutor

        return EventsExecutor()
    raise ValueError(f"executor must be one of {EXECUTORS}, got {kind!r}")


def spin(executor: Executor) -> None:
    """Spin until the context shuts down."""
    if isinstance(executor, Executor):
        executor.spin()
        return
    while rclpy.ok():  # EventsExecutor (see the module docstring)
        executor.spin_once(timeout_sec=0.1)


def spin_node(
    name: str,
    make_node: Callable[[], Node],
    user_errors: tuple[type[BaseException], ...],
    on_created: Callable[[Node], None] | None = None,
    args: list[str] | None = None,
    executor_kind: Callable[[Node], str] | None = None,
) -> int:
    """Run ``make_node()`` on an executor until shutdown; returns the exit status.

    ``on_created`` runs on the executor's thread before spinning (e.g. to raise its priority);
    ``executor_kind(node)`` names the executor (default ``single_threaded``).
    """
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        if on_created is not None:
            on_created(node)
        executor = create_executor(executor_kind(node) if executor_kind is not None else "single_threaded")
        executor.add_node(node)
        spin(executor)
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
