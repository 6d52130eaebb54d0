"""ArmTracking: an arm far from the last command is a hold (named, with how to resume); the limiter
restarts from the arm only at the first joint state after an explicit re-activation."""

from __future__ import annotations

import numpy as np

from flow_policy_ros.contract import IIWA_JOINT_NAMES, JointLimits
from flow_policy_ros.runtime.safety import CommandLimiter, SafetyLimits
from flow_policy_ros.runtime.tracking import RESUME_HINT, TRACKING_TOLERANCE_RAD, ArmTracking

LIMITS = SafetyLimits.from_joint_limits(JointLimits())


def limiter_at(q: np.ndarray) -> CommandLimiter:
    limiter = CommandLimiter(LIMITS, 0.02)
    limiter.advance(q)
    return limiter


def test_an_arm_near_the_last_command_is_tracking():
    tracking = ArmTracking(IIWA_JOINT_NAMES)
    tracking.observe(np.full(7, TRACKING_TOLERANCE_RAD * 0.9))
    assert tracking.not_tracking(np.zeros(7)) == ""
    assert tracking.not_tracking(None) == ""  # nothing sent yet: nothing to track


def test_a_far_arm_is_not_tracking_and_the_reason_says_what_and_how_to_resume():
    tracking = ArmTracking(IIWA_JOINT_NAMES)
    reading = np.zeros(7)
    reading[3] = -0.37
    tracking.observe(reading)
    why = tracking.not_tracking(np.zeros(7))
    assert why.startswith("the arm is 0.37 rad from the last command (joint lbr_iiwa_joint_4): not tracking")
    assert why.endswith(RESUME_HINT) and "deactivate, then activate" in RESUME_HINT


def test_readings_alone_never_move_the_reference():
    """However long a far reading stands still (a stuck sensor looks exactly like a driver holding a new
    position), nothing resets the limiter: there is no automatic restart."""
    tracking = ArmTracking(IIWA_JOINT_NAMES)
    limiter = limiter_at(np.zeros(7))
    for _ in range(50):
        tracking.observe(np.full(7, 0.6))
        assert not tracking.restart_if_pending(limiter)
    np.testing.assert_array_equal(limiter.last_command, np.zeros(7))


def test_reactivation_restarts_at_the_first_joint_state_only_when_not_tracking():
    held = np.zeros(7)
    far, near = ArmTracking(IIWA_JOINT_NAMES), ArmTracking(IIWA_JOINT_NAMES)
    far_limiter, near_limiter = CommandLimiter(LIMITS, 0.02), CommandLimiter(LIMITS, 0.02)
    far.continue_from(far_limiter, held)
    near.continue_from(near_limiter, held)
    assert not far.restart_if_pending(far_limiter)  # no joint state yet: nothing decided
    far.observe(np.full(7, 0.5))
    near.observe(np.full(7, 0.1))
    assert far.restart_if_pending(far_limiter) and far_limiter.last_command is None
    assert far.restart_note.startswith("restarted from the measured arm at activation: it was 0.50 rad")
    assert not near.restart_if_pending(near_limiter)
    np.testing.assert_array_equal(near_limiter.last_command, held)
    assert near.restart_note.startswith("continued from the held command")
    far_limiter.advance(np.full(7, 0.5))
    far.observe(np.full(7, 1.5))  # once decided, later readings never restart it again
    assert not far.restart_if_pending(far_limiter)
