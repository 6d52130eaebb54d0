"""Tests of flow_policy_ros.ros.messages: name-based joint mapping, observation vector, outgoing messages."""

from __future__ import annotations

import numpy as np
import pytest
from geometry_msgs.msg import PointStamped
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import JointState

from flow_policy_ros.errors import ObservationError
from flow_policy_ros.policy.config import ObservationSpec
from flow_policy_ros.ros.messages import (
    MalformedMessageError,
    MissingJointError,
    NonFiniteValueError,
    action_to_multiarray_msg,
    build_observation,
    chunk_to_trajectory_msg,
    joint_state_arrays,
    point_array,
    values_by_name,
)

NAMES = ("j1", "j2", "j3")


def joint_state(names, positions, velocities=()):
    return JointState(name=list(names), position=list(positions), velocity=list(velocities))


def test_values_by_name_any_order_and_extra_joints():
    """Values are matched by name, whatever the message order, and extra joints are ignored."""
    out = values_by_name(["gripper", "j3", "j1", "j2"], [9.0, 3.0, 1.0, 2.0], NAMES)
    np.testing.assert_array_equal(out, [1.0, 2.0, 3.0])


def test_values_by_name_errors():
    """Missing joint, NaN/inf and malformed messages each raise their own ObservationError subclass."""
    with pytest.raises(MissingJointError, match="j3"):
        values_by_name(["j1", "j2"], [1.0, 2.0], NAMES)
    with pytest.raises(NonFiniteValueError, match="j2"):
        values_by_name(NAMES, [1.0, np.nan, 3.0], NAMES)
    with pytest.raises(NonFiniteValueError):
        values_by_name(NAMES, [1.0, 2.0, -np.inf], NAMES)
    with pytest.raises(MalformedMessageError, match="names"):
        values_by_name(NAMES, [1.0, 2.0], NAMES)
    with pytest.raises(MalformedMessageError, match="repeats"):
        values_by_name(["j1", "j1", "j2", "j3"], [1.0, 1.0, 2.0, 3.0], NAMES)
    assert issubclass(MissingJointError, ObservationError)


def test_joint_state_arrays_by_name():
    """JointState positions and velocities come out in model joint order."""
    msg = joint_state(["j2", "j3", "j1"], [2.0, 3.0, 1.0], [0.2, 0.3, 0.1])
    pos, vel = joint_state_arrays(msg, NAMES)
    np.testing.assert_array_equal(pos, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(vel, [0.1, 0.2, 0.3])
    assert joint_state_arrays(msg, NAMES, need_velocity=False)[1] is None
    with pytest.raises(MissingJointError, match="velocity"):
        joint_state_arrays(joint_state(NAMES, [1.0, 2.0, 3.0]), NAMES)


def test_point_array_rejects_nan():
    """A goal with NaN is refused."""
    msg = PointStamped()
    msg.point.x, msg.point.y, msg.point.z = 0.1, 0.2, 0.3
    np.testing.assert_array_equal(point_array(msg), [0.1, 0.2, 0.3])
    msg.point.y = float("nan")
    with pytest.raises(NonFiniteValueError):
        point_array(msg)


def test_build_observation_follows_spec_order():
    """The vector is the fields in spec order, float32, exactly."""
    spec = ObservationSpec(joint_names=NAMES, fields=("goal", "joint_positions", "joint_velocities"))
    obs = build_observation(spec, positions=[1, 2, 3], velocities=[4, 5, 6], goal=[7, 8, 9])
    assert obs.dtype == np.float32
    np.testing.assert_array_equal(obs, [7, 8, 9, 1, 2, 3, 4, 5, 6])
    spec2 = ObservationSpec(joint_names=NAMES, fields=("joint_positions",))
    np.testing.assert_array_equal(build_observation(spec2, positions=[1, 2, 3]), [1, 2, 3])


def test_build_observation_errors():
    """A missing field, a wrong size or NaN raise ObservationError."""
    spec = ObservationSpec(joint_names=NAMES, fields=("joint_positions", "goal"))
    with pytest.raises(ObservationError, match="goal"):
        build_observation(spec, positions=[1, 2, 3])
    with pytest.raises(ObservationError, match="expected 3"):
        build_observation(spec, positions=[1, 2], goal=[0, 0, 0])
    with pytest.raises(NonFiniteValueError):
        build_observation(spec, positions=[1, 2, np.nan], goal=[0, 0, 0])


def test_chunk_to_trajectory_msg():
    """H points, joint names, time_from_start = (i+1)*dt, header.stamp = tick of point 0."""
    actions = np.arange(12, dtype=np.float64).reshape(4, 3)
    msg = chunk_to_trajectory_msg(actions, NAMES, dt=0.02, stamp_ns=5_250_000_000)
    assert list(msg.joint_names) == list(NAMES)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (5, 250_000_000)
    assert len(msg.points) == 4
    for i, point in enumerate(msg.points):
        assert list(point.positions) == actions[i].tolist()
        assert point.time_from_start.sec * 1_000_000_000 + point.time_from_start.nanosec == (i + 1) * 20_000_000
    with pytest.raises(ValueError, match="shape"):
        chunk_to_trajectory_msg(actions[:, :2], NAMES, 0.02, 0)


def test_action_to_multiarray_msg():
    """One action in model joint order, with a labelled layout dimension."""
    msg = action_to_multiarray_msg(np.array([0.1, 0.2, 0.3]), NAMES)
    assert list(msg.data) == [0.1, 0.2, 0.3]
    assert msg.layout.dim[0].size == 3 and msg.layout.dim[0].label == "j1,j2,j3"


@given(
    order=st.permutations(list(range(5))),
    values=st.lists(st.one_of(st.floats(-3.0, 3.0), st.sampled_from([np.nan, np.inf])), min_size=5, max_size=5),
    drop=st.one_of(st.none(), st.integers(0, 4)),
    duplicate=st.booleans(),
    need_velocity=st.booleans(),
    velocity_count=st.sampled_from([0, 5]),
)
@settings(max_examples=300, deadline=None)
def test_joint_state_reader_agrees_with_the_reference_functions(order, values, drop, duplicate, need_velocity,
                                                                velocity_count):
    """Whatever the message (order, extra/missing/repeated joints, NaN, no velocities), the cached
    reader returns what joint_state_arrays + values_by_name return, or raises the same error type;
    reading a second message with the same names (the cached path) agrees too."""
    from flow_policy_ros.ros.messages import JointStateReader

    all_names = ["a", "b", "c", "d", "extra"]
    names = [all_names[i] for i in order if i != drop]
    positions = [values[i] for i in order if i != drop]
    if duplicate:
        names, positions = names + names[:1], positions + positions[:1]
    velocities = [v / 2 for v in positions] if velocity_count else []
    msg = joint_state(names, positions, velocities)
    observed, action = ("d", "a", "b"), ("a", "c")
    reader = JointStateReader(observed, action, need_velocity)
    try:
        pos, vel = joint_state_arrays(msg, observed, need_velocity)
        expected = (pos, vel, values_by_name(msg.name, msg.position, action, "position"))
    except ObservationError as exc:
        for _ in range(2):
            with pytest.raises(type(exc)):
                reader.read(msg)
        return
    for _ in range(2):
        got = reader.read(msg)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[2], expected[2])
        assert (got[1] is None) == (expected[1] is None)
        if expected[1] is not None:
            np.testing.assert_array_equal(got[1], expected[1])


def test_joint_state_reader_follows_a_driver_that_changes_its_joint_order():
    from flow_policy_ros.ros.messages import JointStateReader

    reader = JointStateReader(NAMES, ("j3",), need_velocity=False)
    pos, _, measured = reader.read(joint_state(["j1", "j2", "j3"], [1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(pos, [1.0, 2.0, 3.0])
    pos, _, measured = reader.read(joint_state(["j3", "j1", "j2"], [3.0, 1.0, 2.0]))
    np.testing.assert_array_equal(pos, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(measured, [3.0])
    with pytest.raises(MissingJointError, match="j2"):
        reader.read(joint_state(["j3", "j1"], [3.0, 1.0]))
