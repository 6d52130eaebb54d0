"""The one ``main`` loop of this package's rclpy nodes: init, spin, stop, clean shutdown.

Signals. rclpy's own SIGINT/SIGTERM handler shuts the context down at once, so a node could no
longer publish its stop (a JointTrajectoryController would run the last chunk, up to H·dt, after
the node is gone). Here rclpy is initialised without signal handlers
(``SignalHandlerOptions.NO``) and :class:`StopRequest` takes SIGINT and SIGTERM instead: the
first one ends the spin loop, then ``on_stop(node, signal_name)`` runs with the context still
valid (the policy node's deactivate path: empty trajectory published and acknowledged, stream
stops), then the node is destroyed and the context shut down. A second signal during that stop
raises KeyboardInterrupt (the user insists). ``rclpy.experimental.EventsExecutor`` installs its
own asio SIGINT/SIGTERM handler when it is created, so the handlers are installed after the
executor. The loop spins in steps of :data:`SPIN_STEP_S`, so a signal is seen within that time
even on an idle node (a Python handler runs only between waits).

Exit: ``finished(node)`` true (e.g. the lifecycle ``shutdown`` transition reached ``finalized``)
ends the loop with status 0 without a signal, after :data:`FINISH_GRACE_S` more of spinning: the
service response that finished it was sent from inside the loop, and a reliable DDS writer
destroyed at once may drop a sample that is not yet acknowledged.

Errors. KeyboardInterrupt and ExternalShutdownException are normal shutdowns, and so are the
RCLError ("context is not valid") and RuntimeError that rclpy raises when the context is shut down
between two waits of the executor or during a take. Bad input (``user_errors``, and rclpy's
parameter type/range errors) is one line, ``<node>: error: <reason>``, on stderr and through the
node's logger at FATAL (so on ``/rosout`` and in the ROS log files), with exit status 1.

Executors (:data:`EXECUTORS`): rclpy's ``SingleThreadedExecutor`` (the default) or the
experimental C++ ``rclpy.experimental.EventsExecutor``, which takes a message to its callback
with less Python per message (measured in ``flow-policy bench --ros``; see README). The latter
has no guard conditions, and in the rclpy 9.1 wheels its ``spin()`` never fires timers, so it is
spun with ``spin_once`` in a loop (as both are here).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.exceptions import ParameterException
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from flow_policy_ros.errors import one_line

EXECUTORS: tuple[str, ...] = ("single_threaded", "events")
#: Longest wait of one spin step (s): how late a signal may be noticed on an idle node.
SPIN_STEP_S = 0.1
#: Spinning after ``finished(node)`` (s), so the last service response leaves the process.
FINISH_GRACE_S = 0.3
#: How long a node that failed stays up after its FATAL line (s): see :func:`report_fatal`.
FATAL_LINGER_S = 2.5
#: ... once a /rosout subscriber is matched, this long for the line to be delivered (s).
FATAL_DELIVERY_S = 0.3
#: The signals that stop a node through its stop path.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def create_executor(kind: str) -> Executor:
    """A fresh executor of ``kind`` (one of :data:`EXECUTORS`)."""
    if kind == "single_threaded":
        return SingleThreadedExecutor()
    if kind == "events":
        from rclpy.experimental import EventsExecutor

        return EventsExecutor()
    raise ValueError(f"executor must be one of {EXECUTORS}, got {kind!r}")


class StopRequest:
    """SIGINT/SIGTERM as a request to stop (see the module docstring); a second signal raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.signal_name = ""
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """True once a stop signal arrived."""
        return bool(self.signal_name)

    def install(self) -> None:
        """Take the stop signals (main thread only; elsewhere Python cannot, and rclpy's defaults stay)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            previous = signal.signal(sig, self._on_signal)
            self._previous.setdefault(sig, previous)  # installed twice: keep the first one found

    def restore(self) -> None:
        """Give the signals back to the handlers found by :meth:`install`."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name


def spin(executor: Executor, stop: Callable[[], bool] = lambda: False) -> None:
    """Spin in steps of :data:`SPIN_STEP_S` until ``stop()`` or the context shuts down."""
    while rclpy.ok() and not stop():
        executor.spin_once(timeout_sec=SPIN_STEP_S)


def spin_node(
    name: str,
    make_node: Callable[[], Node],
    user_errors: tuple[type[BaseException], ...],
    on_created: Callable[[Node], None] | None = None,
    args: list[str] | None = None,
    executor_kind: Callable[[Node], str] | None = None,
    on_stop: Callable[[Node, str], None] | None = None,
    finished: Callable[[Node], bool] | None = None,
) -> int:
    """Run ``make_node()`` on an executor until a stop signal, ``finished(node)`` or shutdown; returns the exit status.

    ``on_created`` runs on the executor's thread before spinning (e.g. to raise its priority);
    ``executor_kind(node)`` names the executor (default ``single_threaded``); ``on_stop(node,
    signal_name)`` runs after a stop signal, before the node is destroyed, with the context valid.
    """
    own_signals = threading.current_thread() is threading.main_thread()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO if own_signals else None)
    node = None
    stop = StopRequest()
    stop.install()  # before configure: a signal during a long warm-up is a stop request too
    try:
        node = make_node()
        if on_created is not None:
            on_created(node)
        executor = create_executor(executor_kind(node) if executor_kind is not None else "single_threaded")
        stop.install()  # again: the EventsExecutor took SIGINT/SIGTERM when it was created
        executor.add_node(node)
        done = (lambda: finished(node)) if finished is not None else (lambda: False)
        spin(executor, lambda: stop.requested or done())  # returns at once after a signal during start-up
        if not stop.requested and done():
            grace_end = time.monotonic() + FINISH_GRACE_S
            spin(executor, lambda: stop.requested or time.monotonic() > grace_end)
        if stop.requested and on_stop is not None:
            on_stop(node, stop.signal_name)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (RCLError, RuntimeError):
        # With the context shut down under the executor (another path than our signals), rclpy
        # raises RCLError ("context is not valid") or, from a message take in flight, RuntimeError
        # ("Unable to convert call argument"): a clean shutdown. With the context valid they are real errors.
        if rclpy.ok():
            raise
    except (*user_errors, ParameterException) as exc:  # bad input: one line, no traceback
        report_fatal(name, node, one_line(exc))
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        stop.restore()
    return 0


def report_fatal(name: str, node: Node | None, reason: str) -> None:
    """``reason`` as one line on stderr (``<name>: error: <reason>``) and through the ROS logger at
    FATAL (``/rosout``, the ROS log files), the node's own logger while it exists; then the node
    lives until a /rosout subscriber is matched plus :data:`FATAL_DELIVERY_S`, at most
    :data:`FATAL_LINGER_S`, so its /rosout publisher (transient local) is discovered and delivers
    the line before the process ends (a node failing at start-up exits within a second of creating
    it: 1 of 3 FATAL lines never reached a /rosout subscriber without this, and a fixed 1 s was
    not enough on a loaded machine). Without any /rosout subscriber the exit waits the full time."""
    print(f"{name}: error: {reason}", file=sys.stderr)
    logger = node.get_logger() if node is not None else get_logger(name)
    try:
        logger.fatal(f"exiting: {reason}")
    except Exception as exc:  # noqa: BLE001 - the stderr line above already says it; never a traceback instead
        print(f"{name}: (the ROS logger failed too: {one_line(exc)})", file=sys.stderr)
        return
    if node is not None:
        deadline = time.monotonic() + FATAL_LINGER_S
        while time.monotonic() < deadline and node.count_subscribers("/rosout") == 0:
            time.sleep(0.05)
        time.sleep(min(FATAL_DELIVERY_S, max(0.0, deadline - time.monotonic())))
