"""Tests of flow_policy_ros.runtime.safety: staleness, finiteness, limits and the command limiter."""

from __future__ import annotations

import numpy as np
import pytest

from flow_policy_ros.policy.config import JointLimits
from flow_policy_ros.runtime.safety import (
    CommandLimiter,
    SafetyError,
    SafetyLimits,
    all_finite,
    clamp_command,
    is_stale,
    missing_names,
    validate_guidance_scale,
)

LIMITS = SafetyLimits(lower=[-1.0, -2.0], upper=[1.0, 2.0], velocity=[1.0, 2.0])
DT = 0.1  # s -> max step 0.1 rad and 0.2 rad


def test_is_stale_boundaries():
    """Data is fresh up to and including the timeout, stale after it, and stale if never received."""
    assert not is_stale(1.0, 1.1, 0.1 + 1e-12)
    assert is_stale(1.0, 1.2, 0.1)
    assert is_stale(None, 0.0, 10.0)


def test_all_finite_and_missing_names():
    """NaN and inf are detected; missing names are reported in required order."""
    assert all_finite([0.0, 1.0])
    assert not all_finite([0.0, np.nan])
    assert not all_finite([np.inf])
    assert missing_names(["a", "b", "c"], ["c", "a"]) == ("b",)


@pytest.mark.parametrize("value", [-0.1, 5.01, float("nan"), float("inf")])
def test_guidance_scale_out_of_bounds_raises(value):
    """guidance_scale outside [0, 5] or non-finite is refused."""
    with pytest.raises(SafetyError, match="guidance_scale"):
        validate_guidance_scale(value)


def test_guidance_scale_in_bounds_passes():
    """Bounds are inclusive."""
    assert validate_guidance_scale(0) == 0.0
    assert validate_guidance_scale(5.0) == 5.0


def test_clamp_exact_cases():
    """Position limit, step from previous command, and reach from measured position, exactly."""
    prev = np.array([0.0, 0.0])
    meas = np.array([0.0, 0.0])
    # far target: step-limited to v*dt
    np.testing.assert_allclose(clamp_command([5.0, -5.0], prev, meas, LIMITS, DT), [0.1, -0.2])
    # small target passes unchanged
    np.testing.assert_allclose(clamp_command([0.05, -0.1], prev, meas, LIMITS, DT), [0.05, -0.1])
    # at the position limit: clipped to the limit
    np.testing.assert_allclose(clamp_command([2.0, 0.0], [0.95, 0.0], [0.95, 0.0], LIMITS, DT), [1.0, 0.0])


def test_clamp_robot_lagging_walks_towards_measured():
    """When measured and previous windows do not overlap, the command steps from the previous command towards the robot."""
    prev = np.array([0.5, 0.0])
    meas = np.array([0.0, 0.0])  # 0.5 rad behind: windows [0.4,0.6] and [-0.1,0.1] disjoint
    np.testing.assert_allclose(clamp_command([0.9, 0.0], prev, meas, LIMITS, DT), [0.4, 0.0])
    np.testing.assert_allclose(clamp_command([-0.9, 0.0], prev, meas, LIMITS, DT), [0.4, 0.0])


def test_clamp_nan_target_holds_previous():
    """A NaN entry in the target holds the previous command for that joint."""
    out = clamp_command([np.nan, 0.1], [0.3, 0.0], [0.3, 0.0], LIMITS, DT)
    np.testing.assert_allclose(out, [0.3, 0.1])


def test_limits_from_joint_limits_tighten_only():
    """Overrides may tighten the model's limits and the velocity scale applies; looser overrides are refused."""
    model = JointLimits(lower=(-1.0, -1.0), upper=(1.0, 1.0), velocity=(2.0, 2.0))
    limits = SafetyLimits.from_joint_limits(model, velocity_scale=0.5, upper=[0.5, 1.0])
    np.testing.assert_allclose(limits.upper, [0.5, 1.0])
    np.testing.assert_allclose(limits.velocity, [1.0, 1.0])
    with pytest.raises(SafetyError, match="looser"):
        SafetyLimits.from_joint_limits(model, lower=[-2.0, -1.0])
    with pytest.raises(SafetyError, match="max_velocity_scale"):
        SafetyLimits.from_joint_limits(model, velocity_scale=1.5)
    with pytest.raises(SafetyError, match="values"):
        SafetyLimits.from_joint_limits(model, velocity=[1.0])


def test_limiter_first_command_relative_to_measured():
    """After construction/reset the first command is within v*dt of the measured position."""
    limiter = CommandLimiter(LIMITS, DT)
    np.testing.assert_allclose(limiter.limit([1.0, 1.0], [0.5, 0.5]), [0.6, 0.7])
    limiter.reset()
    assert limiter.last_command is None
    np.testing.assert_allclose(limiter.limit([0.0, 0.0], [0.5, 0.5]), [0.4, 0.3])


def test_limiter_trajectory_is_step_limited_point_to_point():
    """Trajectory points are limited one period apart; the last command becomes point 0."""
    limiter = CommandLimiter(LIMITS, DT)
    out = limiter.limit_trajectory(np.array([[1.0, 0.0]] * 4), np.array([0.0, 0.0]))
    np.testing.assert_allclose(out[:, 0], [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(limiter.last_command, [0.1, 0.0])


def test_adversarial_stream_never_violates_limits():
    """A random stream of wild targets (incl. NaN/inf) and jumping measurements never yields a command
    outside the position limits or a step beyond v*dt from the previous command."""
    rng = np.random.default_rng(0)
    lower, upper = np.array([-1.0, -2.0, -0.5]), np.array([1.0, 2.0, 3.0])
    limits = SafetyLimits(lower, upper, [0.5, 3.0, 1.0])
    limiter = CommandLimiter(limits, 0.02)
    step = limits.velocity * 0.02
    previous = None
    for _ in range(5000):
        target = rng.normal(0, 5, 3)
        target[rng.random(3) < 0.05] = np.nan
        target[rng.random(3) < 0.05] = np.inf
        measured = rng.uniform(lower - 1, upper + 1)
        if rng.random() < 0.1:
            limiter.reset()
            previous = None
        command = limiter.limit(target, measured)
        assert np.all(np.isfinite(command))
        assert np.all(command >= lower) and np.all(command <= upper)
        reference = np.clip(measured, lower, upper) if previous is None else previous
        assert np.all(np.abs(command - reference) <= step + 1e-12)
        previous = command


def test_limiter_refuses_nan_measurement():
    """No command can be checked against a NaN measurement."""
    with pytest.raises(SafetyError, match="measured"):
        CommandLimiter(LIMITS, DT).limit([0.0, 0.0], [np.nan, 0.0])


@pytest.mark.parametrize("mode", ["receding_horizon", "temporal_ensemble"])
def test_adversarial_chunks_through_scheduler_and_limiter(mode):
    """Wild random chunks (huge values, NaN), arriving late at random, scheduled and limited as the node
    does, never give a command outside the position limits or more than v*dt from the previous one."""
    from flow_policy_ros.runtime.chunking import ActionChunk, make_scheduler

    rng = np.random.default_rng(2)
    horizon, dt = 8, 0.02
    limits = SafetyLimits([-2.9, -2.0, -1.0], [2.9, 2.0, 1.5], [1.5, 1.5, 0.5])
    scheduler = make_scheduler(mode, horizon, 3)
    limiter = CommandLimiter(limits, dt)
    measured = np.zeros(3)
    previous = None
    pending: list[tuple[int, ActionChunk]] = []
    for tick in range(3000):
        for _, c in [p for p in pending if p[0] <= tick]:
            scheduler.add_chunk(c, tick)
        pending = [p for p in pending if p[0] > tick]
        if not pending and scheduler.due(tick):
            actions = rng.normal(0.0, 10.0, (horizon, 3))
            actions[rng.random((horizon, 3)) < 0.02] = np.nan
            pending.append((tick + int(rng.integers(0, horizon + 3)), ActionChunk(actions, tick)))
        measured = measured + rng.normal(0.0, 0.05, 3)
        action = scheduler.action_at(tick)
        if action is None:
            continue
        command = limiter.limit(action, measured)
        assert np.all(command >= limits.lower) and np.all(command <= limits.upper)
        if previous is not None:
            assert np.all(np.abs(command - previous) <= limits.velocity * dt + 1e-12)
        previous = command
