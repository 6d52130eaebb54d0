"""PolicyController: every transition without ROS, and invariants over random event sequences.

The controller is pure (events in, decisions out), so its whole behaviour is tested here with
integer nanosecond clocks; the DDS tests in test_policy_node check that the node carries the
decisions out. The property-based tests drive random interleavings of ticks (with skipped
ticks), joint states (fresh, lagging, missing for a while), goal changes and inference results
(early, late, failed, NaN, wrong shape, wildly out of range) and check what the robot would
execute: never outside the joint limits, never a step beyond the velocity limit from the
previous command actually sent (stream: the previous Command; trajectory: the setpoint a
JointTrajectoryController holds at the previous tick).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flow_policy_ros.contract import IIWA_JOINT_NAMES, JointLimits, ObservationSpec
from flow_policy_ros.errors import SafetyError
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

H, A = 8, 7
PERIOD_NS = 20_000_000
LIMITS = SafetyLimits.from_joint_limits(JointLimits())
STEP = LIMITS.velocity * PERIOD_NS * 1e-9  # rad per tick
SPEC = ObservationSpec(joint_names=IIWA_JOINT_NAMES, fields=("joint_positions", "goal"))
GOAL = np.array([0.7, 0.0, 0.45])
HOME = np.zeros(A)


def make(execution: str = "stream", chunking: str = "receding_horizon", replan_every: int = 4,
         stale_timeout_s: float = 0.1, rtc_max_delay: int = 3) -> PolicyController:
    config = ControllerConfig(SPEC, H, PERIOD_NS * 1e-9, execution, chunking, replan_every, 0.01, stale_timeout_s,
                              rtc_max_delay=rtc_max_delay, action_joint_names=IIWA_JOINT_NAMES)
    return PolicyController(config, LIMITS)


def joint_state(ctrl: PolicyController, now_ns: int, q: np.ndarray = HOME) -> list:
    return ctrl.on_joint_state(now_ns, q, None, q, now_ns)


def result(request: InferenceRequest, actions: np.ndarray | None = None, error: str | None = None) -> InferenceResult:
    return InferenceResult.for_request(request, 0.001, actions, error)


def requests(decisions: list) -> list[InferenceRequest]:
    return [d for d in decisions if isinstance(d, InferenceRequest)]


def chunk(value: float = 0.01) -> np.ndarray:
    """A ramp away from home: action i = value * (i + 1) on every joint."""
    return np.outer(np.arange(1, H + 1) * value, np.ones(A))


def start_running(ctrl: PolicyController, actions: np.ndarray | None = None) -> list:
    """Goal, first joint state, tick 0, the joint state that triggers inference, its result."""
    ctrl.on_goal(GOAL)
    joint_state(ctrl, 0)
    out = ctrl.on_tick(0)
    req = requests(joint_state(ctrl, 1_000_000))
    assert len(req) == 1 and req[0].tick == 0
    return out + ctrl.on_inference_result(result(req[0], chunk() if actions is None else actions))


# --------------------------------------------------------------------------- transitions


def test_waits_for_joint_states_and_goal():
    ctrl = make()
    assert ctrl.on_tick(0) == [] and ctrl.state == "waiting" and "joint states" in ctrl.reason
    joint_state(ctrl, 1)
    assert ctrl.on_tick(PERIOD_NS) == [] and ctrl.state == "waiting" and ctrl.reason == "no goal yet"
    ctrl.on_goal(GOAL)
    assert ctrl.on_tick(2 * PERIOD_NS) == [] and ctrl.state == "running"  # due: the command waits for the chunk


def test_stream_first_command_comes_with_the_chunk_and_then_one_per_tick():
    ctrl = make()
    out = start_running(ctrl)
    commands = [d for d in out if isinstance(d, Command)]
    assert len(commands) == 1 and commands[0].tick == 0 and commands[0].obs_stamp_ns == 1_000_000
    np.testing.assert_allclose(commands[0].positions, chunk()[0])
    for k in range(1, 4):
        joint_state(ctrl, k * PERIOD_NS - 1, ctrl.last_command)  # the arm follows its commands
        out = ctrl.on_tick(k * PERIOD_NS)
        assert [type(d) for d in out] == [Command] and out[0].tick == k and out[0].obs_stamp_ns is None
        np.testing.assert_allclose(out[0].positions, chunk()[k])
    assert ctrl.counters.commands_sent == 4 and ctrl.counters.chunks_received == 1


def test_replan_is_due_after_replan_every_ticks_and_waits_for_a_fresh_joint_state():
    ctrl = make(replan_every=4)
    start_running(ctrl)
    for k in range(1, 4):
        ctrl.on_tick(k * PERIOD_NS)
    assert ctrl.on_tick(4 * PERIOD_NS) == []  # due: tick 4's command waits for the new chunk
    assert requests(joint_state(ctrl, 4 * PERIOD_NS + 500_000))[0].tick == 4


def test_late_joint_state_sends_the_old_chunks_command_first():
    """No joint state for 3/4 of the due tick: the old chunk's command for it goes out, then inference."""
    ctrl = make()
    start_running(ctrl)
    for k in range(1, 4):
        ctrl.on_tick(k * PERIOD_NS)
    ctrl.on_tick(4 * PERIOD_NS)
    out = joint_state(ctrl, 4 * PERIOD_NS + 16_000_000, chunk()[3])
    assert isinstance(out[0], Command) and out[0].tick == 4 and isinstance(out[1], InferenceRequest)
    np.testing.assert_allclose(out[0].positions, chunk()[4])
    assert ctrl.counters.late_first_commands == 1
    assert [d for d in ctrl.on_inference_result(result(out[1], chunk())) if isinstance(d, Command)] == []


def test_inference_past_the_next_tick_costs_that_tick_its_command():
    ctrl = make()
    ctrl.on_goal(GOAL)
    joint_state(ctrl, 0)
    ctrl.on_tick(0)
    req = requests(joint_state(ctrl, 100))[0]
    assert ctrl.on_tick(PERIOD_NS) == []  # chunk not there yet: nothing to command
    assert ctrl.counters.late_first_commands == 1
    out = ctrl.on_inference_result(result(req, chunk()))
    assert out == []  # tick 0 was not owed any more; tick 1's command comes with the next tick
    out = ctrl.on_tick(2 * PERIOD_NS)
    assert out[0].tick == 2 and np.all(out[0].positions <= STEP + 1e-12)  # first command: one step from the arm


def test_stale_joint_states_hold_and_fresh_data_resumes():
    ctrl = make(stale_timeout_s=0.05)
    start_running(ctrl)
    ctrl.on_tick(PERIOD_NS)
    assert ctrl.on_tick(4 * PERIOD_NS) == [] and ctrl.state == "stale"
    joint_state(ctrl, 4 * PERIOD_NS + 1000)
    assert ctrl.on_tick(5 * PERIOD_NS) == [] and ctrl.state == "running"  # replans at once
    assert ctrl.counters.deadline_misses == 2


def test_trajectory_mode_publishes_the_chunk_and_one_stop_when_stale():
    ctrl = make("trajectory", stale_timeout_s=0.05)
    out = start_running(ctrl)
    trajectories = [d for d in out if isinstance(d, Trajectory)]
    assert len(trajectories) == 1 and trajectories[0].tick == 0 and trajectories[0].stamp_ns == 0
    assert trajectories[0].points.shape == (H, A)
    assert ctrl.on_tick(4 * PERIOD_NS) == [Stop("joint states older than 0.05 s")]
    assert ctrl.on_tick(5 * PERIOD_NS) == []  # one stop, not one per tick
    assert ctrl.counters.stops_sent == 1


def test_goal_change_discards_old_results_and_replans():
    ctrl = make()
    start_running(ctrl)
    for k in range(1, 4):
        ctrl.on_tick(k * PERIOD_NS)
    ctrl.on_tick(4 * PERIOD_NS)
    old = requests(joint_state(ctrl, 4 * PERIOD_NS + 1))[0]
    ctrl.on_goal(GOAL + 0.1)
    assert ctrl.generation == 1
    assert ctrl.on_inference_result(result(old, chunk(0.5))) == []
    assert ctrl.counters.chunks_discarded == 1
    assert ctrl.on_tick(5 * PERIOD_NS) == []  # nothing to execute for the new goal: hold, replan
    new = requests(joint_state(ctrl, 5 * PERIOD_NS + 1))
    assert new and new[0].generation == 1


def test_goal_change_keeps_the_velocity_limit_against_a_lagging_arm():
    """The bug the limiter reset caused: the arm lags far behind the last command; after a new goal the
    first command must still be within one step of the previous command, not of the arm."""
    ctrl = make()
    start_running(ctrl, chunk(0.03))
    for k in range(1, 4):
        ctrl.on_tick(k * PERIOD_NS)
    last = ctrl.last_command
    ctrl.on_goal(GOAL + 0.1)
    ctrl.on_tick(4 * PERIOD_NS)
    lagging = HOME - 0.2  # the arm is 0.3 rad behind the last command
    req = requests(joint_state(ctrl, 4 * PERIOD_NS + 1, lagging))[0]
    out = [d for d in ctrl.on_inference_result(result(req, np.tile(lagging, (H, 1)))) if isinstance(d, Command)]
    assert np.all(np.abs(out[0].positions - last) <= STEP + 1e-12)


@pytest.mark.parametrize("bad, counter", [
    (np.full((H, A), np.nan), "invalid_outputs"),
    (np.zeros((H // 2, A)), "invalid_outputs"),
    (None, "inference_errors"),
])
def test_invalid_or_failed_inference_holds_with_error_and_retries(bad, counter):
    ctrl = make("trajectory")
    start_running(ctrl)
    for k in range(1, 4):
        ctrl.on_tick(k * PERIOD_NS)
    ctrl.on_tick(4 * PERIOD_NS)
    req = requests(joint_state(ctrl, 4 * PERIOD_NS + 1))[0]
    out = ctrl.on_inference_result(result(req, bad, "RuntimeError: boom" if bad is None else None))
    assert len(out) == 1 and isinstance(out[0], Stop) and ctrl.state == "error"
    assert getattr(ctrl.counters, counter) == 1
    assert ("boom" in ctrl.reason) if bad is None else ("invalid model output" in ctrl.reason)
    for k in range(5, 8):  # no retry before replan_every ticks have passed
        assert ctrl.on_tick(k * PERIOD_NS) == []
        assert requests(joint_state(ctrl, k * PERIOD_NS + 1)) == []
    ctrl.on_tick(8 * PERIOD_NS)
    retry = requests(joint_state(ctrl, 8 * PERIOD_NS + 1))
    assert retry, "the controller retries after replan_every ticks"
    out = ctrl.on_inference_result(result(retry[0], chunk()))
    assert ctrl.state == "running" and any(isinstance(d, Trajectory) for d in out)


def test_measured_position_beyond_the_limits_is_a_hold_not_a_target():
    ctrl = make("trajectory")
    start_running(ctrl)
    q = HOME.copy()
    q[3] = 3.5  # beyond joint 4's 2.09 rad
    joint_state(ctrl, PERIOD_NS - 1, q)
    out = ctrl.on_tick(PERIOD_NS)
    assert isinstance(out[0], Stop) and ctrl.state == "hold" and "joint 3" in ctrl.reason and "3.500" in ctrl.reason
    assert requests(joint_state(ctrl, PERIOD_NS + 2, q)) == []
    joint_state(ctrl, 2 * PERIOD_NS - 1)
    ctrl.on_tick(2 * PERIOD_NS)
    assert ctrl.state == "running"


def test_early_timer_callback_is_ignored_and_skipped_ticks_are_deadline_misses():
    ctrl = make()
    start_running(ctrl)
    assert ctrl.on_tick(PERIOD_NS // 3) == []
    ctrl.on_tick(3 * PERIOD_NS)
    assert ctrl.counters.deadline_misses == 2 and ctrl.current_tick == 3


def test_config_refuses_bad_values():
    with pytest.raises(SafetyError, match="execution must be one of"):
        ControllerConfig(SPEC, H, 0.02, "teleport")
    with pytest.raises(ValueError, match="replan_every"):
        ControllerConfig(SPEC, H, 0.02, replan_every=H + 1)
    with pytest.raises(SafetyError, match="guidance_scale"):
        ControllerConfig(SPEC, H, 0.02, guidance_scale=9.0)


# --------------------------------------------------------------------------- invariants


class Robot:
    """What the robot executes: a forward position controller (stream) or a JTC (trajectory)."""

    def __init__(self, execution: str) -> None:
        self.execution = execution
        self.setpoints: dict[int, np.ndarray] = {}  # tick -> setpoint the robot holds at that tick
        self.trajectory: tuple[int, np.ndarray] | None = None
        self.pending: list[tuple[int, np.ndarray]] = []  # stamped ahead, in start order (a JTC queues them)
        self.last: np.ndarray | None = None
        self.commands: list[tuple[int, np.ndarray]] = []
        self.ticks = 0

    def apply(self, decisions: list, tick: int) -> None:
        for d in decisions:
            if isinstance(d, Command):
                self.commands.append((tick, d.positions))
                self.last = d.positions
                self.setpoints[tick] = d.positions
            elif isinstance(d, Trajectory) and d.tick > tick:  # stamped ahead: spliced in when its time comes,
                self.pending = [p for p in self.pending if p[0] < d.tick] + [(d.tick, d.points)]  # replacing later ones
            elif isinstance(d, Trajectory):
                self.trajectory, self.pending = (d.tick, d.points), []
                self.setpoints[tick] = d.points[tick - d.tick]
                self.last = self.setpoints[tick]
            elif isinstance(d, Stop):
                self.trajectory, self.pending = None, []

    def advance(self, tick: int) -> None:
        """Tick boundaries up to ``tick``: the JTC moves on along its trajectory (or holds), skipped ticks too."""
        first = max(self.setpoints, default=tick - 1) + 1
        for k in range(first, tick + 1):
            while self.pending and k >= self.pending[0][0]:
                self.trajectory = self.pending.pop(0)
            if self.execution == "trajectory" and self.trajectory is not None:
                start, points = self.trajectory
                if 0 <= k - start < len(points):
                    self.setpoints[k] = points[k - start]
                    self.last = self.setpoints[k]
            if k not in self.setpoints and self.last is not None:
                self.setpoints[k] = self.last


#: One control tick each: (ticks advanced, joint state, when the pending result is delivered, its kind,
#: goal change, a number for the chunk's scale / the goal offset).
STEPS = st.lists(
    st.tuples(
        st.sampled_from([1, 1, 1, 1, 1, 1, 2, 3]),
        st.sampled_from(["fresh"] * 6 + ["lag", "lag", "late", "none", "restart", "stuck", "offset", "lie"]),
        st.sampled_from(["now", "now", "now", "next"]),
        st.sampled_from(["ok"] * 6 + ["wild", "wild", "nan", "short", "error", "badprefix"]),
        st.sampled_from([False] * 9 + [True]),
        st.floats(-1.0, 1.0),
    ),
    min_size=10, max_size=150,
)


def _chunk(kind: str, value: float, rng: np.random.Generator, req: InferenceRequest) -> tuple[np.ndarray | None, str | None]:
    """A model's answer: ok (an RTC model reproduces the prefix), wild, NaN, wrong shape, error, or bad prefix."""
    if kind in ("ok", "badprefix"):
        actions = value * np.cumsum(rng.uniform(-0.1, 0.1, (H, A)), axis=0)
        if req.prefix_length and kind == "ok":
            actions[: req.prefix_length] = req.prefix_actions[: req.prefix_length]
        return actions, None
    if kind == "wild":
        return rng.uniform(-50, 50, (H, A)), None  # far outside the limits, jumps of many rad
    if kind == "nan":
        actions = rng.uniform(-1, 1, (H, A))
        actions[rng.integers(H), rng.integers(A)] = np.nan
        return actions, None
    if kind == "short":
        return rng.uniform(-1, 1, (H - 3, A)), None
    return None, "RuntimeError: injected"


def run_steps(steps: list, execution: str, chunking: str, replan_every: int, seed: int) -> Robot:
    """Drive a controller through ``steps`` with an arm that follows (or lags behind) what it is sent, and a
    sensor that may lie about it for a while: one joint's reading stuck 0.35-0.4 rad off ('stuck'), every
    joint +0.5 rad ('offset'), random readings up to 0.4 rad off ('lie'); each fault lasts 8 steps."""
    rng = np.random.default_rng(seed)
    ctrl = make(execution, chunking, replan_every, stale_timeout_s=0.05)
    robot = Robot(execution)
    arm = rng.uniform(-0.5, 0.5, A)
    ctrl.on_goal(GOAL)
    tick, pending = 0, []
    fault, fault_left, stuck = "", 0, (0, 0.0)

    ctrl.on_joint_state(0, arm, None, arm, 0)
    robot.apply(ctrl.on_tick(0), 0)  # the first tick event fixes the controller's tick 0 at t = 0
    for advance, js, when, kind, goal_change, value in steps:
        tick += advance
        now = tick * PERIOD_NS + int(rng.integers(0, 2_000_000))
        robot.advance(tick)
        robot.apply(ctrl.on_tick(now), tick)
        assert ctrl.current_tick == tick
        for req in pending:  # late results from the previous tick
            robot.apply(ctrl.on_inference_result(result(req, *_chunk(kind, value, rng, req))), tick)
        pending = []
        if goal_change:
            ctrl.on_goal(GOAL + value * 0.1)
        if js in ("stuck", "offset", "lie"):
            j = int(rng.integers(A))
            fault, fault_left, stuck = js, 8, (j, arm[j] + rng.choice([-1, 1]) * rng.uniform(0.35, 0.4))
        if js == "restart":  # the driver came back with the arm somewhere else
            arm = rng.uniform(-1.0, 1.0, A)
        elif js in ("fresh", "stuck", "offset", "lie") and robot.last is not None:
            arm = arm + np.clip(robot.last - arm, -STEP, STEP)  # the arm follows; 'lag' leaves it behind
        reading = arm.copy()  # what the sensor says
        if fault_left > 0:
            fault_left -= 1
            if fault == "stuck":
                reading[stuck[0]] = stuck[1]
            elif fault == "offset":
                reading = arm + 0.5
            else:
                reading = arm + rng.uniform(-0.4, 0.4, A)
        if js != "none":
            offset = 17_000_000 if js == "late" else int(rng.integers(0, 4_000_000))
            out = ctrl.on_joint_state(now + offset, reading, None, reading, now + offset)
            robot.apply(out, tick)
            for req in requests(out):
                if when == "now":
                    robot.apply(ctrl.on_inference_result(result(req, *_chunk(kind, value, rng, req))), tick)
                else:
                    pending.append(req)
        assert ctrl.state in ("waiting", "running", "stale", "error", "hold")
    assert ctrl.counters.limiter_restarts == 0  # only a re-activation restarts the limiter
    robot.ticks = tick
    return robot


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS, execution=st.sampled_from(["stream", "trajectory"]),
       chunking=st.sampled_from(["receding_horizon", "temporal_ensemble", "rtc"]), replan_every=st.integers(1, H),
       seed=st.integers(0, 2**16))
def test_commands_stay_in_limits_and_within_one_velocity_step(steps, execution, chunking, replan_every, seed):
    robot = run_steps(steps, execution, chunking, replan_every, seed)
    # what the robot was told to do, tick by tick
    if execution == "stream":
        ticks = [t for t, _ in robot.commands]
        sent = [p for _, p in robot.commands]
        assert len(ticks) == len(set(ticks)), "at most one command per tick"
    else:
        ticks = sorted(robot.setpoints)
        sent = [robot.setpoints[t] for t in ticks]
    for positions in sent:
        assert np.all(np.isfinite(positions))
        assert np.all(positions >= LIMITS.lower - 1e-12) and np.all(positions <= LIMITS.upper + 1e-12)
    for k in range(1, len(sent)):
        # one velocity step from the previous command, whatever the sensor says (stuck, offset, lying)
        assert np.all(np.abs(sent[k] - sent[k - 1]) <= STEP + 1e-9), (sent[k - 1], sent[k])


def test_the_event_sequences_really_command_the_robot():
    """Positive control for the property test: typical sequences do reach running and send commands,
    including right after goal changes (so the velocity check above is not vacuous)."""
    rng = np.random.default_rng(0)
    steps = [(1, "fresh", "now", "ok", bool(i % 25 == 24), float(rng.uniform(-1, 1))) for i in range(100)]
    for execution in ("stream", "trajectory"):
        for chunking in ("receding_horizon", "rtc"):
            robot = run_steps(steps, execution, chunking, 4, 0)
            assert len(robot.setpoints) >= 90 if execution == "trajectory" else len(robot.commands) >= 90


# --------------------------------------------------------------------------- real-time chunking


def rtc_make(execution: str = "stream", replan_every: int = 4, rtc_max_delay: int = 3, min_prefix: int = 1,
             blend: int = 0) -> PolicyController:
    config = ControllerConfig(SPEC, H, PERIOD_NS * 1e-9, execution, "rtc", replan_every, rtc_max_delay=rtc_max_delay,
                              rtc_min_prefix=min_prefix, rtc_blend_ticks=blend)
    return PolicyController(config, LIMITS)


def with_prefix(req: InferenceRequest, actions: np.ndarray) -> np.ndarray:
    """``actions`` with the request's committed prefix written into its first rows (as an RTC model does)."""
    out = np.array(actions, dtype=float)
    out[: req.prefix_length] = req.prefix_actions[: req.prefix_length]
    return out


def rtc_running(execution: str = "stream", replan_every: int = 4, rtc_max_delay: int = 3, **kwargs) -> PolicyController:
    ctrl = rtc_make(execution, replan_every, rtc_max_delay, **kwargs)
    ctrl.on_goal(GOAL)
    joint_state(ctrl, 0)
    ctrl.on_tick(0)
    req = requests(joint_state(ctrl, 1_000_000))[0]
    ctrl.on_inference_result(result(req, with_prefix(req, chunk(0.01))))
    return ctrl


def test_rtc_first_prefix_is_the_hold_position_and_the_first_chunk_continues_it():
    """Activation / episode start: no chunk to continue, so the prefix is where the arm is, held; the
    first chunk starts from rest there (no step), for stream and trajectory alike."""
    for execution in ("stream", "trajectory"):
        ctrl = rtc_make(execution, min_prefix=3)
        ctrl.on_goal(GOAL)
        q = np.full(A, 0.2)
        ctrl.on_joint_state(0, q, None, q, 0)
        ctrl.on_tick(0)
        req = requests(ctrl.on_joint_state(1000, q, None, q, 1000))[0]
        assert req.prefix_length == 3
        np.testing.assert_array_equal(req.prefix_actions[:3], np.tile(q, (3, 1)))
        new = with_prefix(req, q + np.outer(np.maximum(np.arange(H) - 2, 0) * 0.01, np.ones(A)))
        out = ctrl.on_inference_result(result(req, new))
        if execution == "trajectory":  # spliced in at the end of the hold prefix, from its last row
            assert out[0].tick == 3 and np.all(np.abs(out[0].points[0] - q) <= STEP + 1e-12)
            continue
        sent = [ctrl.on_tick(k * PERIOD_NS)[0].positions for k in range(1, 6)]
        np.testing.assert_array_equal(sent[:2], np.tile(q, (2, 1)))  # the hold rows, sent exactly
        np.testing.assert_allclose(sent[2:], new[3:6])
        assert ctrl.counters.limiter_clipped == 0


def test_rtc_after_a_reset_that_moved_the_arm_the_arm_is_not_pulled_back():
    """A new episode over DDS: sim_node resets the arm elsewhere and sends a new goal. The last command
    (the previous episode's end) is no hold position any more, and nothing from the joint states may
    restart the limiter: the controller holds ('not tracking', no request, no command) until the
    explicit restart (re-activation, which sim_node requests after its reset), never commanding the
    arm back to where the last episode ended."""
    ctrl = rtc_running(min_prefix=3)
    for k in range(1, 4):
        ctrl.on_tick(k * PERIOD_NS)
    old_end = ctrl.last_command
    far = np.full(A, 0.8)
    for i in range(6):  # the reset arm stands still (sim_node holds it there before the new goal)
        ctrl.on_joint_state(4 * PERIOD_NS - 10_000 + i, far, None, far, 4 * PERIOD_NS - 10_000 + i)
    ctrl.on_goal(GOAL + 0.05)
    sent = []
    for k in range(4, 10):
        sent += ctrl.on_tick(k * PERIOD_NS)
        sent += ctrl.on_joint_state(k * PERIOD_NS + 1000, far, None, far, k * PERIOD_NS + 1000)
    assert sent == [] and ctrl.state == "hold" and "not tracking" in ctrl.reason
    np.testing.assert_array_equal(ctrl.last_command, old_end)
    assert np.max(np.abs(old_end - far)) > 0.5


def test_rtc_prefix_is_the_commands_actually_sent_and_they_are_sent_exactly():
    ctrl = rtc_running()
    sent = {}
    for k in range(1, 4):
        sent[k] = ctrl.on_tick(k * PERIOD_NS)[0].positions
    out = ctrl.on_tick(4 * PERIOD_NS)  # due: the command of tick 4 goes out now (it is prefix row 0)
    assert [type(d) for d in out] == [Command] and out[0].tick == 4
    sent[4] = out[0].positions
    req = requests(joint_state(ctrl, 4 * PERIOD_NS + 1, np.full(A, -0.15)))[0]  # the arm is elsewhere now (within the tracking tolerance)
    assert req.prefix_length == 1  # no delay measured yet (results came in the same tick) + margin 1
    np.testing.assert_array_equal(req.prefix_actions[0], sent[4])
    # a slow result next time: late, shifted onto what was executed, counted; the controller measures it
    ctrl.on_tick(5 * PERIOD_NS)
    ctrl.on_tick(6 * PERIOD_NS)
    ctrl.on_inference_result(result(req, with_prefix(req, chunk(0.02))))
    assert ctrl.counters.rtc_late_chunks == ctrl.counters.rtc_late_used == 1 and ctrl.counters.rtc_late_discarded == 0
    for k in range(7, 8):
        ctrl.on_tick(k * PERIOD_NS)
    ctrl.on_tick(8 * PERIOD_NS)  # due
    req = requests(joint_state(ctrl, 8 * PERIOD_NS + 1))[0]
    assert req.prefix_length == 3  # 2 ticks of delay + margin 1
    committed = req.prefix_actions[:3]
    for k, row in zip(range(9, 11), committed[1:]):  # whatever a tracking arm does, the committed commands go out
        joint_state(ctrl, k * PERIOD_NS - 1, ctrl.last_command + 0.2)
        np.testing.assert_array_equal(ctrl.on_tick(k * PERIOD_NS)[0].positions, row)
    for a, b in zip(committed, committed[1:]):
        assert np.all(np.abs(b - a) <= STEP + 1e-12)


def test_rtc_chunk_takes_over_at_the_end_of_its_prefix():
    ctrl = rtc_running()
    for k in range(1, 4):
        ctrl.on_tick(k * PERIOD_NS)
    ctrl.on_tick(4 * PERIOD_NS)
    req = requests(joint_state(ctrl, 4 * PERIOD_NS + 1, ctrl.last_command))[0]
    new = with_prefix(req, np.tile(ctrl.last_command, (H, 1)) + 0.005)  # the continuation differs from the old chunk
    assert ctrl.on_inference_result(result(req, new)) == []  # stream: nothing extra to send
    joint_state(ctrl, 5 * PERIOD_NS - 1, ctrl.last_command)
    out = ctrl.on_tick(5 * PERIOD_NS)
    np.testing.assert_allclose(out[0].positions, new[1])


def test_rtc_seam_is_blended_from_the_executing_chunk():
    ctrl = rtc_running(blend=3)
    for k in range(1, 5):
        ctrl.on_tick(k * PERIOD_NS)
    req = requests(joint_state(ctrl, 4 * PERIOD_NS + 1, ctrl.last_command))[0]
    old = ctrl.current_plan(5)
    new = with_prefix(req, np.tile(ctrl.last_command, (H, 1)) + 0.02)
    ctrl.on_inference_result(result(req, new))
    sent = np.array([ctrl.on_tick(k * PERIOD_NS)[0].positions for k in range(5, 9)])
    assert len(old) == 3  # the old chunk's ticks 5..7
    w = (sent[:3, 0] - old[:, 0]) / (new[1:4, 0] - old[:, 0])  # the new chunk's weight, tick by tick
    assert np.all(np.diff(w) > 0) and 0 < w[0] < 0.3 and w[2] < 1
    np.testing.assert_allclose(sent[3], new[4])  # after the blend: the new chunk


def test_rtc_rejects_a_chunk_that_does_not_reproduce_its_prefix():
    ctrl = rtc_running()
    for k in range(1, 5):
        ctrl.on_tick(k * PERIOD_NS)
    req = requests(joint_state(ctrl, 4 * PERIOD_NS + 1))[0]
    out = ctrl.on_inference_result(result(req, chunk(0.5)))
    assert out == [] and ctrl.state == "error" and "committed prefix" in ctrl.reason
    assert ctrl.counters.invalid_outputs == 1


def test_rtc_a_delay_longer_than_replan_every_stretches_the_execution_horizon():
    """What main refused (state error, retried forever, the arm standing still): the prefix needs 4 ticks,
    replan_every is 2; now the next request waits until the chunk has taken over, and nothing is late."""
    ctrl = rtc_running(replan_every=2, rtc_max_delay=5)
    pending, commanded = [], []
    for k in range(1, 60):
        out = ctrl.on_tick(k * PERIOD_NS)
        commanded += [d.tick for d in out if isinstance(d, Command)]
        if pending and k - pending[0].tick >= 3:  # every result takes 3 ticks
            ctrl.on_inference_result(result(pending[0], with_prefix(pending[0], chunk(0.001) + ctrl.last_command)))
            pending = []
        pending += requests(joint_state(ctrl, k * PERIOD_NS + 1, ctrl.last_command))
    assert ctrl.state == "running" and commanded == list(range(1, 60))
    # only the first slow result is late (no delay measured yet: prefix 1); shifted and used
    assert ctrl.scheduler.replan_every == 4 and ctrl.counters.rtc_late_chunks == ctrl.counters.rtc_late_used == 1
    assert ctrl.counters.chunks_received >= 10 and ctrl.timing_warning == ("", "")


def test_rtc_trajectory_is_stamped_at_the_prefix_boundary_and_spliced_there():
    ctrl = rtc_running("trajectory")
    jtc = ctrl.execution.jtc
    for k in range(1, 5):
        ctrl.on_tick(k * PERIOD_NS)
    req = requests(joint_state(ctrl, 4 * PERIOD_NS + 1, jtc.setpoint(3)))[0]
    d = req.prefix_length
    np.testing.assert_array_equal(req.prefix_actions[:d], [jtc.setpoint(t) for t in range(4, 4 + d)])  # what the JTC executes
    new = with_prefix(req, np.tile(jtc.setpoint(4), (H, 1)) + 0.004)
    out = ctrl.on_inference_result(result(req, new))
    assert len(out) == 1 and isinstance(out[0], Trajectory)
    assert out[0].tick == 4 + d and out[0].stamp_ns == (4 + d) * PERIOD_NS
    np.testing.assert_allclose(out[0].points[0], new[d])
    assert np.all(np.abs(out[0].points[0] - req.prefix_actions[d - 1]) <= STEP + 1e-12)


def test_rtc_needs_an_rtc_model():
    with pytest.raises(SafetyError, match="needs a real-time chunking model"):
        ControllerConfig(SPEC, H, 0.02, chunking="rtc", rtc_max_delay=0)


def drive(ctrl: PolicyController, ticks: range, reading: np.ndarray, actions: np.ndarray) -> list:
    """Tick by tick: a joint state ``reading`` (measured = observed), the tick, another joint state (it
    triggers a due inference), any chunk answered with ``actions``; every decision, in order."""
    out = []
    for k in ticks:
        decisions = joint_state(ctrl, k * PERIOD_NS - 1, reading) + ctrl.on_tick(k * PERIOD_NS)
        decisions += joint_state(ctrl, k * PERIOD_NS + 1, reading)
        for req in requests(decisions):
            decisions += ctrl.on_inference_result(result(req, actions))
        out += decisions
    return out


def sent_positions(decisions: list) -> list[np.ndarray]:
    """What the robot is told to hold next: each Command, each Trajectory's first point."""
    return [d.positions if isinstance(d, Command) else d.points[0] for d in decisions if isinstance(d, (Command, Trajectory))]


@pytest.mark.parametrize("execution", ["stream", "trajectory"])
def test_a_stuck_joint_reading_is_a_hold_not_a_jump(execution):
    """Issue 22 item 1: the arm at rest, one joint's reading stuck 0.37 rad off (inside its training
    range): nothing moves, the controller holds with a reason naming the joint and how to resume."""
    ctrl = make(execution)
    start_running(ctrl, chunk(0.0))
    last = ctrl.last_command
    stuck = last.copy()
    stuck[1] += 0.37
    decisions = drive(ctrl, range(1, 30), stuck, np.tile(stuck, (H, 1)))  # the model follows the lying reading
    assert sent_positions(decisions) == [] and np.array_equal(ctrl.last_command, last)
    assert ctrl.state == "hold" and "0.37 rad from the last command (joint lbr_iiwa_joint_2): not tracking" in ctrl.reason
    assert "ros2 lifecycle set /flow_policy_node deactivate, then activate" in ctrl.reason
    assert (execution == "trajectory") == any(isinstance(d, Stop) for d in decisions)  # a JTC stops where it is
    decisions = drive(ctrl, range(30, 40), last, np.tile(last + 0.2, (H, 1)))  # the reading recovers: run on
    sent = sent_positions(decisions)
    assert ctrl.state == "running" and sent and np.all(np.abs(sent[0] - last) <= STEP + 1e-12)
    assert ctrl.counters.limiter_restarts == 0


@pytest.mark.parametrize("execution", ["stream", "trajectory"])
@pytest.mark.parametrize("offset", [0.5, 0.1])
def test_reactivation_restarts_from_the_arm_only_when_it_is_not_tracking(execution, offset):
    """The explicit restart event (a new controller at lifecycle activation, continuing from the held
    command): an arm 0.5 rad away restarts the limiter from where the arm is (first command within one
    step of it, counted, said); an arm 0.1 rad away keeps the held command as the reference."""
    held = np.linspace(-0.3, 0.3, A)
    arm = held + offset
    ctrl = make(execution)
    ctrl.continue_from(held)
    ctrl.on_goal(GOAL)
    decisions = drive(ctrl, range(0, 6), arm, np.tile(arm + 0.3, (H, 1)))
    sent = sent_positions(decisions)
    restarted = offset > 0.25
    reference = arm if restarted else held
    assert sent and np.all(np.abs(sent[0] - reference) <= STEP + 1e-12)
    steps = [np.diff(d.points, axis=0) for d in decisions if isinstance(d, Trajectory)] or [np.diff(sent, axis=0)]
    assert all(np.all(np.abs(step) <= STEP + 1e-12) for step in steps)  # then one step at a time
    assert ctrl.counters.limiter_restarts == int(restarted)
    assert ctrl.tracking.restart_note.startswith("restarted from the measured arm" if restarted else "continued from the held")


@settings(max_examples=60, deadline=None)
@given(execution=st.sampled_from(["stream", "trajectory"]), seed=st.integers(0, 2**16),
       fault=st.sampled_from(["stuck", "offset", "lie"]), size=st.floats(0.0, 0.8))
def test_no_reading_moves_the_command_more_than_one_step(execution, seed, fault, size):
    """Stuck, offset and lying readings of any size up to 0.8 rad, for 40 ticks, while the model chases
    them: every command stays within one velocity step of the previous one sent."""
    rng = np.random.default_rng(seed)
    ctrl, robot = make(execution), Robot(execution)
    robot.apply(start_running(ctrl, chunk(0.0)), 0)
    for k in range(1, 40):
        robot.advance(k)
        reading = robot.last.copy()
        if fault == "stuck":
            reading[seed % A] += size
        elif fault == "offset":
            reading += size
        else:
            reading += rng.uniform(-size, size, A)
        robot.apply(drive(ctrl, range(k, k + 1), reading, np.tile(reading, (H, 1))), k)
    sent = [robot.setpoints[t] for t in sorted(robot.setpoints)]  # what the robot holds, tick by tick
    assert len(sent) == 40 or execution == "stream"
    for a, b in zip(sent, sent[1:]):
        assert np.all(np.abs(b - a) <= STEP + 1e-9), (a, b)
    assert ctrl.counters.limiter_restarts == 0
    sent = len(robot.commands) if execution == "stream" else ctrl.counters.trajectories_sent - 1
    assert sent > 0 or size > 0.25  # within the tolerance the controller runs on (the check is not vacuous)


def test_a_far_but_moving_arm_does_not_move_the_reference():
    """A glitching stream: commands keep one step from the last command."""
    ctrl = make()
    start_running(ctrl, chunk(0.01))
    last = ctrl.last_command
    rng = np.random.default_rng(1)
    for k in range(1, 12):
        decisions = joint_state(ctrl, k * PERIOD_NS - 1, rng.uniform(-1.5, 1.5, A)) + ctrl.on_tick(k * PERIOD_NS)
        for req in requests(decisions):
            decisions += ctrl.on_inference_result(result(req, chunk(0.01)))
        for d in decisions:
            if isinstance(d, Command):
                assert np.all(np.abs(d.positions - last) <= STEP + 1e-12)
                last = d.positions
    assert ctrl.counters.limiter_restarts == 0


# --------------------------------------------------------------------------- output range guard


@pytest.mark.parametrize("execution", ["stream", "trajectory"])
def test_a_chunk_beyond_the_training_action_range_is_an_invalid_output(execution):
    """Issue 22 item 2: with the model's training action range in the config, a finite chunk 3 rad off is an
    invalid output (counted, hold, reason naming joint, value and range) and nothing of it is sent."""
    from flow_policy_ros.runtime.ood import ObservationRange

    rng = ObservationRange(np.full(A, -1.0), np.full(A, 1.0), IIWA_JOINT_NAMES, "test")
    config = ControllerConfig(SPEC, H, PERIOD_NS * 1e-9, execution, action_range=rng, action_joint_names=IIWA_JOINT_NAMES)
    ctrl = PolicyController(config, LIMITS)
    assert ctrl.output_guard == "on (margin 0.25 range widths)"
    out = start_running(ctrl, np.full((H, A), 3.0))
    assert not any(isinstance(d, (Command, Trajectory)) for d in out) and ctrl.last_command is None
    assert ctrl.state == "error" and ctrl.counters.invalid_outputs == 1
    assert ctrl.reason == ("invalid model output: joint lbr_iiwa_joint_1 = 3.000 rad is 1 range widths outside the "
                           "training action range [-1.000, 1.000] (output_margin 0.25)")
    assert make().output_guard == "off: no action range in metadata"
    with pytest.raises(SafetyError, match="output_margin"):
        ControllerConfig(SPEC, H, 0.02, output_margin=-1.0)
