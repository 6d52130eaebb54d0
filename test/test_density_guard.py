"""The density hold (runtime/density_guard.py) alone and inside the PolicyController: k low scores in
a row hold (state, score and threshold in the reason), probes keep scoring while holding, k good
ones resume; a model without a density is unaffected."""

from __future__ import annotations

import math

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
)
from flow_policy_ros.runtime.density_guard import DensityGuard
from flow_policy_ros.runtime.safety import SafetyLimits

H, A, PERIOD_NS = 8, 7, 20_000_000
LIMITS = SafetyLimits.from_joint_limits(JointLimits())
SPEC = ObservationSpec(joint_names=IIWA_JOINT_NAMES, fields=("joint_positions", "goal"))
THRESHOLD = -10.0
GOOD, LOW = -5.0, -20.0


def test_guard_holds_after_k_low_scores_and_resumes_after_k_good_ones() -> None:
    guard = DensityGuard(THRESHOLD, hold_after=2)
    assert guard.observe(LOW) == "" and guard.status.state == "low (1/2)"
    assert guard.observe(GOOD) == "" and guard.status.state == "ok"  # not in a row: no hold
    assert guard.observe(LOW) == ""
    reason = guard.observe(LOW)
    assert "log-likelihood -20.00 below threshold -10.00" in reason and guard.holding and guard.holds == 1
    assert guard.status.state == "hold" and guard.status.score == LOW and guard.status.threshold == THRESHOLD
    assert guard.observe(GOOD) and guard.status.state == "recovering (1/2)"
    assert guard.observe(LOW) and guard.status.state == "hold"  # a low probe restarts the count
    assert guard.observe(GOOD)
    assert guard.observe(GOOD) == "" and not guard.holding and guard.holds == 1 and guard.low_scores == 4


def test_guard_counts_nan_as_low_and_is_off_without_a_threshold() -> None:
    guard = DensityGuard(THRESHOLD, hold_after=1)
    assert guard.observe(math.nan)
    off = DensityGuard(None)
    assert off.observe(-1e9) == "" and off.status.state == "off" and not off.enabled
    assert DensityGuard(THRESHOLD).observe(None) == ""  # a result without a score changes nothing
    with pytest.raises(ValueError, match="density_hold_after must be >= 1"):
        DensityGuard(THRESHOLD, hold_after=0)


def make(threshold: float | None = THRESHOLD, hold_after: int = 2, execution: str = "stream") -> PolicyController:
    config = ControllerConfig(SPEC, H, PERIOD_NS * 1e-9, execution, "receding_horizon", 4,
                              density_threshold=threshold, density_hold_after=hold_after)
    return PolicyController(config, LIMITS)


def chunk() -> np.ndarray:
    return np.outer(np.arange(1, H + 1) * 0.01, np.ones(A))


class Loop:
    """Drives one controller tick by tick: a joint state before each tick's request, the result at once."""

    def __init__(self, ctrl: PolicyController) -> None:
        self.ctrl, self.tick, self.requests = ctrl, 0, 0
        ctrl.on_goal(np.array([0.7, 0.0, 0.45]))
        ctrl.on_joint_state(0, np.zeros(A), None, np.zeros(A), 0)

    def step(self, score: float | None) -> list:
        now = self.tick * PERIOD_NS
        out = self.ctrl.on_tick(now)
        q = np.zeros(A) if self.ctrl.last_command is None else self.ctrl.last_command
        decisions = self.ctrl.on_joint_state(now + 1_000_000, q, None, q, now + 1_000_000)
        for request in [d for d in decisions if isinstance(d, InferenceRequest)]:
            self.requests += 1
            assert request.prefix_length == 0
            out += self.ctrl.on_inference_result(InferenceResult.for_request(request, 0.001, chunk(),
                                                                             log_likelihood=score))
        self.tick += 1
        return out + decisions


def test_controller_holds_on_k_low_decisions_probes_while_holding_and_resumes() -> None:
    loop = Loop(make())
    for _ in range(8):  # 2 decisions (replan every 4 ticks), both in distribution
        loop.step(GOOD)
    assert loop.ctrl.state == "running" and loop.requests == 2
    loop.step(LOW)  # tick 8: the first low decision's chunk is still executed (k = 2)
    assert loop.ctrl.state == "running"
    for _ in range(3):
        loop.step(LOW)
    loop.step(LOW)  # tick 12: the second low decision in a row: hold, its chunk is not executed
    assert loop.ctrl.state == "hold" and "below threshold -10.00" in loop.ctrl.reason
    assert loop.ctrl.guard.density.holds == 1
    before = loop.requests
    commands = [d for _ in range(5) for d in loop.step(LOW) if isinstance(d, Command)]
    assert not commands and loop.ctrl.state == "hold"
    assert loop.requests - before == 5, "while holding the controller scores the live observation every tick"
    loop.step(GOOD)
    assert loop.ctrl.state == "hold" and "recovering 1/2" in loop.ctrl.reason
    loop.step(GOOD)  # the 2nd good probe ends the hold; its chunk is discarded
    assert not loop.ctrl.guard.density.holding
    out = loop.step(GOOD)  # running again: a fresh request, its chunk executed
    assert loop.ctrl.state == "running" and any(isinstance(d, Command) for d in out)


def test_trajectory_mode_sends_one_stop_on_a_density_hold() -> None:
    loop = Loop(make(execution="trajectory", hold_after=1))
    for _ in range(4):
        loop.step(GOOD)
    stops = [d for _ in range(6) for d in loop.step(LOW) if isinstance(d, Stop)]
    assert len(stops) == 1 and "observation density" in stops[0].reason


def test_without_a_density_the_scores_are_ignored() -> None:
    loop = Loop(make(threshold=None))
    for _ in range(20):
        loop.step(LOW)
    assert loop.ctrl.state == "running" and loop.ctrl.guard.density.status.state == "off"
