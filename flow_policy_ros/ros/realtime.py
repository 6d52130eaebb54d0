"""Real-time scheduling for the node processes, the ros2_control way (no ROS, Linux only).

``thread_priority`` (a node parameter, like controller_manager's) > 0 asks for SCHED_FIFO at
that priority (1-99) for the calling thread; threads it creates afterwards (the DDS threads
when called before ``rclpy.init``) inherit it. Without the right (root, CAP_SYS_NICE or an
``rtprio`` limit) the request fails and the node runs with normal scheduling: the returned
text says so and goes into the node's diagnostics. 0 = normal scheduling, nothing is changed.

Why it matters here: on a 2-core machine shared with a training run, the control tick waits
for a core (measured tick jitter p99 16 ms under normal scheduling, 0.5 ms with SCHED_FIFO
10; see ``flow-policy bench --ros``).
"""

from __future__ import annotations

import os


def set_thread_priority(priority: int) -> str:
    """Request SCHED_FIFO ``priority`` (1-99) for the calling thread; 0 = leave as is. Returns what applies."""
    if priority <= 0:
        return "SCHED_OTHER"
    if not 1 <= priority <= 99:
        raise ValueError(f"thread_priority must be in [0, 99], got {priority}")
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError) as exc:
        return f"SCHED_OTHER (SCHED_FIFO {priority} refused: {exc.strerror or exc}; needs CAP_SYS_NICE or an rtprio limit)"
    return f"SCHED_FIFO {priority}"


def drop_realtime() -> None:
    """Put the calling thread back on normal scheduling (for helper threads that must not compete with the tick)."""
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
