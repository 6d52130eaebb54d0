"""The PyBullet arm: tick schedule, determinism, limits, collision checks (real PyBullet)."""

from __future__ import annotations

import numpy as np
import pytest

from flow_policy_ros.policy.config import IIWA_POSITION_UPPER, IIWA_VELOCITY_LIMIT
from flow_policy_ros.sim.arm import PHYSICS_HZ, IiwaArm, Obstacle
from flow_policy_ros.sim.kinematics import HOME_Q


def _sine_commands(n: int) -> np.ndarray:
    t = np.arange(1, n + 1)[:, None] * 0.02
    return np.asarray(HOME_Q) + 0.3 * np.sin(2.0 * t + np.arange(7))


def _run(arm: IiwaArm, commands: np.ndarray) -> np.ndarray:
    arm.reset(HOME_Q)
    states = [arm.step_control(c) for c in commands]
    return np.stack([np.concatenate([s.positions, s.velocities]) for s in states])


def test_tick_schedule_takes_5_5_5_5_4_physics_steps_at_50_hz() -> None:
    with IiwaArm(0.02) as arm:
        steps = [arm.tick_step(k) for k in range(11)]
        assert np.diff(steps).tolist() == [5, 5, 5, 5, 4, 5, 5, 5, 5, 4]
        for _ in range(5):
            arm.step_control(np.asarray(HOME_Q))
        assert arm.physics_step == 24 and arm.time_s == pytest.approx(0.1, abs=1e-12)
        assert arm.tick == 5


def test_same_commands_give_bitwise_identical_trajectories_across_instances_and_resets() -> None:
    commands = _sine_commands(60)
    with IiwaArm() as first, IiwaArm() as second:
        a = _run(first, commands)
        second.reset(np.asarray(HOME_Q) + 0.1)  # a different history must not matter
        second.step_control(np.asarray(HOME_Q))
        b = _run(second, commands)
        c = _run(first, commands)
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_arm_tracks_a_command_and_settles() -> None:
    with IiwaArm() as arm:
        target = np.asarray(HOME_Q) + 0.02
        for _ in range(50):
            state = arm.step_control(target)
        assert np.max(np.abs(state.positions - target)) < 1e-3
        assert np.max(np.abs(state.velocities)) < 1e-2


def test_commands_are_rate_limited_and_clipped_to_position_limits() -> None:
    with IiwaArm() as arm:
        far = np.asarray(HOME_Q) + 1.0
        limited = arm.limit_command(far)
        tick_s = arm.tick_step(1) / PHYSICS_HZ
        assert np.allclose(limited - np.asarray(HOME_Q), np.asarray(IIWA_VELOCITY_LIMIT) * tick_s)
        arm.step_control(far)
        assert arm.clipped_commands == 1
        high = np.asarray(IIWA_POSITION_UPPER) + 5.0
        assert np.all(arm.limit_command(high) <= np.asarray(IIWA_POSITION_UPPER))
        with pytest.raises(ValueError, match="non-finite"):
            arm.limit_command(np.full(7, np.nan))
        with pytest.raises(ValueError, match=r"shape \(7,\)"):
            arm.step_control(np.zeros(6))


def test_step_until_reaches_arbitrary_times_and_keeps_tick_bookkeeping() -> None:
    with IiwaArm() as arm:
        arm.set_position_targets(HOME_Q)
        assert arm.step_until(0.05) == 12
        assert arm.time_s == pytest.approx(0.05)
        assert arm.tick == 2  # ticks at 0.0208 and 0.0417 s have passed
        assert arm.step_until(0.05) == 0


def test_self_collision_and_obstacle_contact_are_detected() -> None:
    with IiwaArm() as arm:
        arm.reset(HOME_Q)
        assert not arm.in_self_collision() and not arm.in_obstacle_contact()
        ee = arm.end_effector_position()
        arm.reset((0.0, 1.5, 0.0, -2.0, 0.0, -2.0, 0.0))  # wrist folded onto the forearm
        assert arm.in_self_collision()
        arm.reset(HOME_Q, obstacles=[Obstacle(center_xy=(ee[0], ee[1]), radius_m=0.03, height_m=ee[2])])
        assert arm.in_obstacle_contact()


def test_reset_rejects_bad_start_poses() -> None:
    with IiwaArm() as arm:
        with pytest.raises(ValueError, match="outside the joint limits"):
            arm.reset(np.full(7, 4.0))
        with pytest.raises(ValueError, match="start_q"):
            arm.reset([0.0] * 6)
