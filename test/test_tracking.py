"""ArmTracking: the limiter restarts from the arm only when it is far from the last command AND stands still."""

from __future__ import annotations

import numpy as np

from flow_policy_ros.contract import JointLimits
from flow_policy_ros.runtime.safety import CommandLimiter, SafetyLimits
from flow_policy_ros.runtime.tracking import STEADY_READINGS, STEADY_TOLERANCE_RAD, TRACKING_TOLERANCE_RAD, ArmTracking

LIMITS = SafetyLimits.from_joint_limits(JointLimits())


def limiter_at(q: np.ndarray) -> CommandLimiter:
    limiter = CommandLimiter(LIMITS, 0.02)
    limiter.advance(q)
    return limiter


def test_an_arm_near_the_last_command_keeps_the_reference():
    tracking = ArmTracking()
    for _ in range(STEADY_READINGS):
        tracking.observe(np.full(7, TRACKING_TOLERANCE_RAD * 0.9))
    limiter = limiter_at(np.zeros(7))
    assert not tracking.rebase_if_not_tracking(limiter) and limiter.last_command is not None


def test_a_far_arm_standing_still_restarts_the_limiter():
    tracking = ArmTracking()
    far = np.full(7, 0.6)
    limiter = limiter_at(np.zeros(7))
    for i in range(STEADY_READINGS - 1):
        tracking.observe(far + (-1) ** i * STEADY_TOLERANCE_RAD * 0.5)
        assert not tracking.rebase_if_not_tracking(limiter)  # not enough readings yet
    tracking.observe(far)
    assert tracking.standing_still() and tracking.rebase_if_not_tracking(limiter)
    assert limiter.last_command is None


def test_a_far_moving_arm_never_moves_the_reference():
    tracking = ArmTracking()
    limiter = limiter_at(np.zeros(7))
    rng = np.random.default_rng(0)
    for _ in range(3 * STEADY_READINGS):
        tracking.observe(0.6 + rng.uniform(-0.05, 0.05, 7))
        assert not tracking.rebase_if_not_tracking(limiter)


def test_no_last_command_nothing_to_restart():
    tracking = ArmTracking()
    tracking.observe(np.ones(7))
    assert not tracking.rebase_if_not_tracking(CommandLimiter(LIMITS, 0.02))
