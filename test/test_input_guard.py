"""InputGuard: measured positions beyond the limits, the out-of-distribution guard, goal checks."""

from __future__ import annotations

import numpy as np

from flow_policy_ros.contract import IIWA_JOINT_NAMES, FeatureSpec, JointLimits, ObservationSpec, goal_feature
from flow_policy_ros.runtime.controller_config import ControllerConfig, ControllerCounters
from flow_policy_ros.runtime.input_guard import MEASURED_LIMIT_TOLERANCE_RAD, InputGuard
from flow_policy_ros.runtime.ood import ObservationRange, observation_labels
from flow_policy_ros.runtime.safety import SafetyLimits

SPEC = ObservationSpec(joint_names=IIWA_JOINT_NAMES, fields=("joint_positions", "goal"))
LOW = np.array([-0.5, 0.1, -0.2, -2.0, -0.1, 0.5, -0.6, 0.45, -0.3, 0.25])
HIGH = np.array([0.5, 1.2, 0.2, -0.6, 0.1, 1.6, 0.6, 0.70, 0.3, 0.55])
RANGE = ObservationRange(LOW, HIGH, observation_labels(SPEC), "test")
MID = (LOW + HIGH) / 2
LIMITS = SafetyLimits.from_joint_limits(JointLimits())


def guard(observation_range: ObservationRange | None = RANGE, margin: float = 0.25) -> InputGuard:
    config = ControllerConfig(SPEC, 8, 0.02, observation_range=observation_range, ood_margin=margin)
    return InputGuard(config, LIMITS, ControllerCounters())


def test_measured_positions_within_the_tolerance_pass_and_beyond_it_name_the_joint():
    g = guard()
    q = np.zeros(7)
    q[2] = LIMITS.upper[2] + MEASURED_LIMIT_TOLERANCE_RAD * 0.9
    assert g.measured_beyond_limits(q) == ""
    q[5] = LIMITS.lower[5] - MEASURED_LIMIT_TOLERANCE_RAD * 1.1
    reason = g.measured_beyond_limits(q)
    assert "action joint 5" in reason and f"{q[5]:.3f}" in reason


def test_ood_levels_ok_warn_hold_and_counts_each_once():
    g = guard(margin=0.2)
    assert g.out_of_distribution(MID, holding=False) == "" and g.warning == "" and g.ood.value == 0.0
    near = MID.copy()
    near[0] = HIGH[0] + 0.15 * (HIGH[0] - LOW[0])  # beyond half the margin, within it
    assert g.out_of_distribution(near, holding=False) == "" and "near the edge" in g.warning
    g.out_of_distribution(near, holding=False)
    assert g.counters.ood_warnings == 1  # one warning while it lasts
    far = MID.copy()
    far[8] = HIGH[8] + 1.0
    reason = g.out_of_distribution(far, holding=False)
    assert reason.startswith("out of distribution: goal[y]") and "margin 0.2" in reason and g.warning == ""
    g.out_of_distribution(far, holding=True)
    assert g.counters.ood_holds == 1  # already holding: not counted again


def test_without_a_training_range_the_guard_is_off():
    g = guard(None)
    assert g.status.startswith("off") and g.out_of_distribution(MID + 100, holding=False) == "" and g.ood is None
    assert guard().status == "on (margin 0.25 range widths)"


def test_goal_frame_finiteness_and_range():
    g, goal = guard(), goal_feature()
    assert g.vector_problem(goal, MID[7:], "world") == "" and g.vector_problem(goal, MID[7:], None) == ""
    assert "frame 'map'" in g.vector_problem(goal, MID[7:], "map")
    assert "3 finite values" in g.vector_problem(goal, np.array([0.5, np.nan, 0.4]), None)
    assert "3 finite values" in g.vector_problem(goal, np.array([0.5, 0.4]), None)
    far = MID[7:] + np.array([0.0, 0.0, 1.0])
    assert g.vector_problem(goal, far, None).startswith("goal[z]")
    assert guard(None).vector_problem(goal, far, None) == ""  # no range: only frame and finiteness


def test_a_non_task_vector_is_checked_against_its_own_frame():
    pose = FeatureSpec("pose", "vector", "pose", "geometry_msgs/msg/PointStamped", 0.1, 3, frame_id="base")
    g = guard(None)
    assert g.vector_problem(pose, MID[7:], "base") == ""
    assert "pose in frame 'world', expected 'base'" in g.vector_problem(pose, MID[7:], "world")
