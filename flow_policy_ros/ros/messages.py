"""ROS messages ↔ numpy: joints matched by NAME, observation vectors, chunks as trajectories.

The numpy core (:func:`values_by_name`, :func:`build_observation`) lives in
:mod:`flow_policy_ros.runtime.observation`; the helpers here wrap it for sensor_msgs/JointState,
geometry_msgs/PointStamped, trajectory_msgs/JointTrajectory and std_msgs/Float64MultiArray.
No rclpy here: stamps are passed in as integer nanoseconds.

Units: joint positions in rad, velocities in rad/s, goal in m, periods in s, stamps in ns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import PointStamped
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from flow_policy_ros.runtime.observation import (  # noqa: F401 - re-exported for the nodes
    MalformedMessageError,
    MissingJointError,
    NonFiniteValueError,
    build_observation,
    values_by_name,
)


def joint_state_arrays(
    msg: JointState, joint_names: Sequence[str], need_velocity: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions (rad) and velocities (rad/s) of ``joint_names`` from a JointState, by name.

    Velocities are None when ``need_velocity`` is False; when needed, an empty velocity
    array raises :class:`MissingJointError`.
    """
    positions = values_by_name(msg.name, msg.position, joint_names, "position")
    if not need_velocity:
        return positions, None
    if len(msg.velocity) == 0:
        raise MissingJointError("JointState has no velocity values but the model observes joint velocities")
    return positions, values_by_name(msg.name, msg.velocity, joint_names, "velocity")


def point_array(msg: PointStamped) -> np.ndarray:
    """(3,) goal position (m) from a PointStamped; NaN/inf raise :class:`NonFiniteValueError`."""
    goal = np.array([msg.point.x, msg.point.y, msg.point.z], dtype=np.float64)
    if not np.all(np.isfinite(goal)):
        raise NonFiniteValueError(f"goal point {goal.tolist()} has NaN/inf")
    return goal


def time_msg(stamp_ns: int) -> Time:
    """builtin_interfaces/Time from integer nanoseconds."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def duration_msg(seconds: float) -> Duration:
    """builtin_interfaces/Duration from seconds (rounded to ns)."""
    sec, nanosec = divmod(round(seconds * 1e9), 1_000_000_000)
    return Duration(sec=int(sec), nanosec=int(nanosec))


def chunk_to_trajectory_msg(
    actions: np.ndarray, joint_names: Sequence[str], dt: float, stamp_ns: int, frame_id: str = ""
) -> JointTrajectory:
    """A chunk (H, A) as a JointTrajectory.

    Point i (position targets in rad) has ``time_from_start = (i + 1)·dt``: it is the target
    to reach one period after it is commanded. ``header.stamp`` (``stamp_ns``) is the time at
    which point 0 is commanded, i.e. the control tick it applies to.
    """
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[1] != len(joint_names):
        raise ValueError(f"actions must have shape (H, {len(joint_names)}), got {actions.shape}")
    msg = JointTrajectory()
    msg.header.stamp = time_msg(stamp_ns)
    msg.header.frame_id = frame_id
    msg.joint_names = list(joint_names)
    msg.points = [
        JointTrajectoryPoint(positions=row.tolist(), time_from_start=duration_msg((i + 1) * dt))
        for i, row in enumerate(actions)
    ]
    return msg


def action_to_multiarray_msg(action: np.ndarray, joint_names: Sequence[str] | None = None) -> Float64MultiArray:
    """One action (A,) (rad, model joint order) as a Float64MultiArray for a forward position controller.

    When ``joint_names`` are given, the layout has one dimension labelled with them (joined by ',').
    """
    action = np.asarray(action, dtype=np.float64).reshape(-1)
    msg = Float64MultiArray(data=action.tolist())
    label = ",".join(joint_names) if joint_names is not None else "joints"
    msg.layout.dim = [MultiArrayDimension(label=label, size=int(action.size), stride=int(action.size))]
    return msg
