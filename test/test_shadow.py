"""Shadow mode's pure parts: the previews follow the measured arm, and the comparison per tick.

A PolicyController is driven as policy_node drives it in shadow mode (each preview carried out,
then :func:`follow_robot`) while the arm does NOT follow: every preview must stay within the
limits and within one step (k + 1 for point k of a trajectory) of the arm, however long it runs,
where a limiter that followed its own previews walks them off.
"""

from __future__ import annotations

import numpy as np
import pytest

from flow_policy_ros.contract import IIWA_JOINT_NAMES, JointLimits, ObservationSpec
from flow_policy_ros.runtime.controller import (
    Command,
    ControllerConfig,
    InferenceRequest,
    InferenceResult,
    PolicyController,
    Stop,
    Trajectory,
)
from flow_policy_ros.runtime.safety import SafetyLimits
from flow_policy_ros.runtime.shadow import ShadowComparison, follow_robot

H, A = 8, 7
PERIOD_NS = 20_000_000
LIMITS = SafetyLimits.from_joint_limits(JointLimits())
STEP = LIMITS.velocity * PERIOD_NS * 1e-9
SPEC = ObservationSpec(joint_names=IIWA_JOINT_NAMES, fields=("joint_positions", "goal"))
GOAL = np.array([0.7, 0.0, 0.45])


def run(execution: str, shadow: bool, arm: np.ndarray, ticks: int = 60) -> tuple[list, ShadowComparison]:
    """The arm stands at ``arm``; the policy always wants to move +0.5 rad on every joint. Returns the
    previews (Command / Trajectory decisions) and the comparison."""
    config = ControllerConfig(SPEC, H, PERIOD_NS * 1e-9, execution, "receding_horizon", 4, 0.01, 0.1)
    ctrl = PolicyController(config, LIMITS)
    comparison = ShadowComparison(IIWA_JOINT_NAMES)
    ctrl.on_goal(GOAL)
    previews: list = []

    def carry_out(decisions: list) -> None:
        for d in decisions:
            if isinstance(d, InferenceRequest):
                actions = arm + 0.5 * np.ones((H, A))  # far away: every command is clipped
                carry_out(ctrl.on_inference_result(InferenceResult.for_request(d, 0.001, actions, None)))
            elif isinstance(d, (Command, Trajectory, Stop)):
                previews.append(d)
                if shadow:
                    comparison.on_decision(d, ctrl.current_tick)
                    follow_robot(ctrl)

    for tick in range(ticks):
        now = tick * PERIOD_NS
        carry_out(ctrl.on_joint_state(now - PERIOD_NS // 2, arm, None, arm, now - PERIOD_NS // 2))
        carry_out(ctrl.on_tick(now))
        carry_out(ctrl.on_joint_state(now + 1_000_000, arm, None, arm, now + 1_000_000))
        comparison.on_tick(ctrl.current_tick, arm, ctrl.state == "running")
    return previews, comparison


@pytest.mark.parametrize("execution", ["stream", "trajectory"])
def test_previews_follow_the_arm_not_themselves(execution):
    arm = np.linspace(-0.3, 0.3, A)
    previews, comparison = run(execution, shadow=True, arm=arm)
    assert len(previews) > 10
    for d in previews:
        points = d.positions[None, :] if isinstance(d, Command) else d.points
        for k, point in enumerate(points):
            assert np.all(point >= LIMITS.lower) and np.all(point <= LIMITS.upper)
            assert np.all(np.abs(point - arm) <= (k + 1) * STEP + 1e-12), f"preview point {k} strays from the arm"
    # the arm stands still while the policy asks for one step per tick: stream, each command is one
    # step from the arm; trajectory, point k of a chunk is k + 1 steps out (a chunk runs 4 ticks)
    assert comparison.ticks_compared > 40
    steps = 1 if execution == "stream" else 4
    np.testing.assert_allclose(comparison.worst_per_joint_rad, steps * STEP, rtol=1e-9)
    assert STEP.max() - 1e-12 <= comparison.percentile_rad(50) <= steps * STEP.max() + 1e-12


def test_without_following_the_arm_trajectory_previews_drift():
    """The reason for follow_robot: in trajectory mode the node's model of what the JTC executes runs
    along its own previews, and each new trajectory starts from there, away from a still arm."""
    arm = np.zeros(A)
    previews, _ = run("trajectory", shadow=False, arm=arm)
    assert max(np.max(np.abs(d.points[0] - arm)) for d in previews) > 2 * STEP.max()


def test_comparison_uses_the_preview_of_the_tick_before_and_holds_after_it():
    c = ShadowComparison(IIWA_JOINT_NAMES)
    assert c.on_tick(0, np.zeros(A), True) is None  # nothing previewed yet
    c.on_decision(Command(5, np.full(A, 0.1)), 5)
    assert c.on_tick(5, np.zeros(A), True) is None  # tick 4 had no preview
    np.testing.assert_allclose(c.on_tick(6, np.zeros(A), True), -0.1)
    assert c.on_tick(7, np.zeros(A), False) is None  # not running: not counted
    points = np.outer(np.arange(1, 4) * 0.01, np.ones(A))
    c.on_decision(Trajectory(8, 0, points), 8)
    np.testing.assert_allclose(c.on_tick(9, np.zeros(A), True), -0.01)  # point 0 applies at tick 8
    np.testing.assert_allclose(c.on_tick(20, np.zeros(A), True), -0.03)  # held after the last point
    measured = np.zeros(A)
    measured[2] = 0.5
    c.on_tick(21, measured, True)
    assert c.ticks_compared == 4 and c.worst_joint == IIWA_JOINT_NAMES[2]
    assert c.worst_max_abs_rad == pytest.approx(0.47)
    c.on_decision(Stop("stale"), 22)  # a stop holds the setpoint of its tick
    np.testing.assert_allclose(c.setpoint(30), points[-1])
