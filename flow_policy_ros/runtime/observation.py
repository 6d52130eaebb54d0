"""Observation vectors from joint values matched by NAME (pure numpy, no ROS types).

Real drivers publish joints in any order and may add joints the model does not use; every
lookup here goes by name and refuses missing, repeated or non-finite values. The ROS layer
(:mod:`flow_policy_ros.ros.messages`) and the in-process simulation both build observations
with these functions, so the node and the evaluation see the same vector.

Units: joint positions in rad, velocities in rad/s, goal in m.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from flow_policy_ros.contract import FeatureSpec, ObservationSpec
from flow_policy_ros.errors import ObservationError, TrajectoryError


class MissingJointError(ObservationError):
    """A message lacks a joint (or its value) that the model needs."""


class NonFiniteValueError(ObservationError):
    """A message carries NaN or ±inf where the model needs a value."""


class MalformedMessageError(ObservationError):
    """A message is inconsistent in itself (e.g. more names than positions, duplicate names)."""


def values_by_name(
    names: Sequence[str], values: Sequence[float], wanted: Sequence[str], what: str = "position"
) -> np.ndarray:
    """Reorder ``values`` (given for ``names``, any order) into ``wanted`` order.

    Args:
        names: joint names as they appear in the message (may include extra joints).
        values: one value per name (rad or rad/s).
        wanted: the joints needed, in the output order.
        what: field name for error messages ('position', 'velocity').
    Returns:
        (len(wanted),) float64.
    Raises:
        MalformedMessageError: sizes differ or a name repeats.
        MissingJointError: a wanted joint is absent.
        NonFiniteValueError: a wanted joint's value is NaN/inf.
    """
    names = list(names)
    if len(values) != len(names):
        raise MalformedMessageError(f"JointState has {len(names)} names but {len(values)} {what} values")
    index = {name: i for i, name in enumerate(names)}
    if len(index) != len(names):
        raise MalformedMessageError(f"JointState repeats joint names: {names}")
    missing = [name for name in wanted if name not in index]
    if missing:
        raise MissingJointError(f"JointState lacks {what} of joint(s) {missing}")
    out = np.array([values[index[name]] for name in wanted], dtype=np.float64)
    bad = [name for name, v in zip(wanted, out) if not np.isfinite(v)]
    if bad:
        raise NonFiniteValueError(f"JointState {what} of joint(s) {bad} is NaN/inf")
    return out


def observation_vector(spec: ObservationSpec, features: Mapping[str, np.ndarray]) -> np.ndarray:
    """The graph's ``observation`` input (obs_dim,) float32: the low-dimensional features of
    ``spec`` concatenated in spec order, looked up by NAME in ``features``.

    Args:
        spec: the model's observation spec.
        features: feature name -> values: 'joint_positions' (J,) rad and 'joint_velocities' (J,)
            rad/s in ``spec.joint_names`` order, a vector feature (size,) in its units. Extra
            entries (e.g. images, which are graph inputs of their own) are ignored.
    Raises:
        ObservationError: a feature is missing or has the wrong size; NonFiniteValueError: NaN/inf.
    """
    parts = []
    for feature in spec.low_dim_features:
        value = features.get(feature.name)
        if value is None:
            raise ObservationError(f"observation feature {feature.name!r} is required by the model but was not given")
        value = np.asarray(value, dtype=np.float64).reshape(-1)
        if value.size != feature.size:
            raise ObservationError(f"observation feature {feature.name!r} has {value.size} values, expected {feature.size}")
        if not np.all(np.isfinite(value)):
            raise NonFiniteValueError(f"observation feature {feature.name!r} has NaN/inf: {value.tolist()}")
        parts.append(value)
    return np.concatenate(parts).astype(np.float32)


def build_observation(
    spec: ObservationSpec,
    positions: np.ndarray | None = None,
    velocities: np.ndarray | None = None,
    goal: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`observation_vector` from the joint values and a goal (the round-2 signature)."""
    features = {"joint_positions": positions, "joint_velocities": velocities, "goal": goal}
    return observation_vector(spec, {k: v for k, v in features.items() if v is not None})


def _pose_values(msg: Any) -> list[float]:
    p, q = msg.pose.position, msg.pose.orientation
    return [p.x, p.y, p.z, q.x, q.y, q.z, q.w]


#: How a vector feature's values (and frame) are read from a message of each type; rclpy's and
#: rosbags' messages alike (attribute access only). Keys: contract.VECTOR_MESSAGE_TYPES.
VECTOR_READERS: dict[str, tuple[Callable[[Any], Sequence[float]], Callable[[Any], str | None]]] = {
    "geometry_msgs/msg/PointStamped": (lambda m: [m.point.x, m.point.y, m.point.z], lambda m: m.header.frame_id),
    "geometry_msgs/msg/PoseStamped": (_pose_values, lambda m: m.header.frame_id),
    "std_msgs/msg/Float64MultiArray": (lambda m: list(m.data), lambda m: None),
}


def vector_values(feature: FeatureSpec, msg: Any) -> tuple[np.ndarray, str | None]:
    """(values (size,) float64, the message's frame_id or None) of vector feature ``feature``.

    Raises MalformedMessageError (wrong size) or NonFiniteValueError (NaN/inf), naming the feature.
    """
    values_of, frame_of = VECTOR_READERS[feature.msg_type]
    values = np.asarray(values_of(msg), dtype=np.float64).reshape(-1)
    if values.size != feature.size:
        raise MalformedMessageError(f"{feature.name}: {feature.msg_type} carries {values.size} values, "
                                    f"the model takes {feature.size}")
    if not np.all(np.isfinite(values)):
        raise NonFiniteValueError(f"{feature.name} {values.tolist()} has NaN/inf")
    return values, frame_of(msg)


def stamp_to_ns(stamp: object) -> int:
    """builtin_interfaces/Time (or Duration) -> int ns; any object with ``sec`` and ``nanosec``."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def trajectory_arrays(msg: object, wanted: Sequence[str]) -> tuple[int, np.ndarray, np.ndarray]:
    """A trajectory_msgs/JointTrajectory (rclpy's or rosbags') by joint NAME.

    Returns (header stamp ns, point offsets (K,) int64 ns, positions (K, len(wanted)) rad). An empty
    trajectory (K = 0: "stop") needs no joint names. Raises TrajectoryError naming what is wrong.
    """
    names = list(msg.joint_names)
    stamp_ns = stamp_to_ns(msg.header.stamp)
    if not msg.points:
        return stamp_ns, np.zeros(0, np.int64), np.zeros((0, len(wanted)))
    index = {name: i for i, name in enumerate(names)}
    if len(index) != len(names):
        raise TrajectoryError(f"joint_names repeats a joint: {names}")
    missing = [name for name in wanted if name not in index]
    if missing:
        raise TrajectoryError(f"JointTrajectory lacks joint(s) {missing}; it has {names}")
    cols = [index[name] for name in wanted]
    rows = [np.asarray(point.positions, dtype=np.float64) for point in msg.points]
    if any(row.size != len(names) for row in rows):
        raise TrajectoryError("a point's position count differs from joint_names")
    offsets = np.array([stamp_to_ns(point.time_from_start) for point in msg.points], np.int64)
    return stamp_ns, offsets, np.stack([row[cols] for row in rows])
