"""PrefixCommitter and CommittedCommands: the rtc prefix sized from measured delays, committed, checked."""

from __future__ import annotations

import numpy as np

from flow_policy_ros.contract import IIWA_JOINT_NAMES, JointLimits, ObservationSpec
from flow_policy_ros.runtime.controller_config import ControllerConfig, ControllerCounters
from flow_policy_ros.runtime.prefix_committer import CommittedCommands, PrefixCommitter
from flow_policy_ros.runtime.safety import SafetyLimits

H, A = 8, 7
LIMITS = SafetyLimits.from_joint_limits(JointLimits())
STEP = LIMITS.velocity * 0.02
SPEC = ObservationSpec(joint_names=IIWA_JOINT_NAMES, fields=("joint_positions", "goal"))


def committer(replan_every: int = 4, d_max: int = 3, margin: int = 1, min_prefix: int = 1, blend: int = 0,
              horizon: int = H) -> PrefixCommitter:
    config = ControllerConfig(SPEC, horizon, 0.02, chunking="rtc", replan_every=replan_every, rtc_max_delay=d_max,
                              rtc_margin_ticks=margin, rtc_min_prefix=min_prefix, rtc_blend_ticks=blend)
    return PrefixCommitter(config, A, ControllerCounters())


class Rows:
    """A prefix source that commits ``available`` rows at most: row i = tick + i on every joint."""

    def __init__(self, available: int) -> None:
        self.available = available
        self.asked: list[tuple[int, int]] = []

    def commit_prefix(self, tick: int, d: int, hold: np.ndarray | None = None) -> np.ndarray:
        self.asked.append((tick, d))
        n = min(d, self.available)
        if n == 0 and hold is not None:
            return np.tile(hold, (d, 1))
        return np.tile((tick + np.arange(n, dtype=float))[:, None], (1, A))


def test_length_is_the_longest_recent_delay_plus_the_margin_at_least_the_minimum_at_most_d_max():
    c = committer(margin=1, d_max=6)
    assert c.needed_length() == 1 and c.prefix_length() == 1  # no delay measured yet
    for delay in (0, 2, 1):
        c.record_delay(delay)
    assert c.needed_length() == 3 and c.prefix_length(count=True) == 3 and c.counters.rtc_prefix_clipped == 0
    c.record_delay(7)
    assert c.needed_length() == 8 and c.prefix_length(count=True) == 6 and c.counters.rtc_prefix_clipped == 1
    assert committer(min_prefix=4, d_max=6).prefix_length() == 4  # no delay: still the minimum
    assert committer(min_prefix=4, d_max=3).prefix_length() == 3  # ... clipped to d_max


def test_execution_horizon_follows_the_delay_and_is_never_shorter_than_the_prefix():
    c = committer(replan_every=2, d_max=5, horizon=16)
    assert c.execution_horizon() == 2
    c.record_delay(3)
    assert c.prefix_length() == 4 and c.execution_horizon() == 4  # s >= d: the next request commits from the new chunk
    c.record_delay(9)
    assert c.prefix_length() == 5 and c.execution_horizon() == 5
    assert committer(replan_every=7, d_max=5).execution_horizon() == 7  # a longer replan_every stays


def test_timing_warning_names_the_figures_and_says_what_the_arm_does():
    c = committer(d_max=3, horizon=16)
    assert c.timing_warning() == ("", "")
    c.record_delay(4)  # + margin 1 = 5 > d_max 3: late chunks, shifted
    level, text = c.timing_warning()
    assert level == "WARN" and "inference delay 4 ticks (80 ms)" in text and "d_max 3" in text and "shifted" in text
    c.record_delay(14)  # s 3 + 14 >= H 16: the chunk ends before the next arrives
    level, text = c.timing_warning()
    assert level == "ERROR" and "then holds" in text
    assert c.timing_warning(rtc=False) == ("", "")
    assert c.timing_warning(rtc=False, deadline_hold=True)[0] == "WARN"


def test_commit_takes_the_executing_rows_or_holds():
    c = committer(d_max=3)
    source = Rows(available=10)
    prefix, d = c.commit(7, 3, source, np.zeros(A))
    assert source.asked == [(7, 3)] and d == 3 and prefix.shape == (H, A)
    np.testing.assert_array_equal(prefix[:3, 0], [7, 8, 9])
    assert not prefix[3:].any() and c.counters.rtc_prefix_ticks == 3
    prefix, d = c.commit(7, 2, Rows(available=0), np.full(A, 0.25))  # nothing executing: the hold position
    assert d == 2 and np.all(prefix[:2] == 0.25)


def test_reproduction_check_uses_the_request_in_flight():
    c = committer()
    prefix, d = c.commit(2, 2, Rows(available=5), np.zeros(A))
    chunk = np.zeros((H, A))
    chunk[:d] = prefix[:d] + 5e-6
    assert c.reproduces(chunk, d)
    chunk[1, 3] += 1e-3
    assert not c.reproduces(chunk, d)
    assert not c.reproduces(chunk, 1)  # not the length requested


def ramp(start: float = 0.0, step: float = 0.01, horizon: int = H) -> np.ndarray:
    return np.tile((start + step * np.arange(horizon))[:, None], (1, A))


def test_a_chunk_on_time_is_scheduled_as_requested():
    c = committer(d_max=3)
    actions = ramp()
    out, start = c.fit(actions, 4, 3, 6, actions[1], np.empty((0, 0)), np.zeros(A))
    assert start == 4 and out is actions and c.counters.rtc_late_chunks == 0


def test_a_late_chunk_after_a_hold_is_shifted_in_time():
    c = committer(d_max=3)
    actions = ramp()
    actions[:3] = 0.5  # the hold prefix
    out, start = c.fit(actions, 4, 3, 12, np.full(A, 0.5), np.empty((0, 0)), np.full(A, 0.5))
    assert start == 9 and np.array_equal(out, actions)  # row 3 applies at tick 12: the chunk starts at rest
    assert c.counters.rtc_late_chunks == c.counters.rtc_late_used == 1


def test_a_late_chunk_while_moving_is_offset_onto_what_was_executed_or_dropped_beyond_d_max():
    c = committer(d_max=3, horizon=32)
    actions = ramp(horizon=32)
    executed = actions[5] + 0.02  # the old chunk went on elsewhere for two ticks past the prefix
    out, start = c.fit(actions, 0, 3, 6, executed, np.empty((0, 0)), np.zeros(A))
    assert start == 0
    np.testing.assert_allclose(out[5], executed)  # continuous with what the arm was told
    np.testing.assert_allclose(out[5 + 8:], actions[5 + 8:])  # back on its own plan after the fade
    assert np.all(np.diff(np.abs(out - actions)[5:, 0]) <= 1e-12)  # the offset only shrinks
    assert c.fit(actions, 0, 3, 8, executed, np.empty((0, 0)), np.zeros(A)) is None  # 5 ticks late > d_max 3
    assert (c.counters.rtc_late_chunks, c.counters.rtc_late_used, c.counters.rtc_late_discarded) == (2, 1, 1)


def test_blend_moves_from_the_old_plan_into_the_new_chunk_without_a_kink():
    c = committer(d_max=3, blend=4)
    new = ramp(0.0, 0.02)
    old = ramp(0.0, 0.01)  # the executing chunk from 2 rows before the takeover (row 2) on, slower
    out = c.blend(new, 2, old, np.zeros(A))
    np.testing.assert_array_equal(out[:2], new[:2])  # the prefix is untouched
    np.testing.assert_array_equal(out[6:], new[6:])
    w_new = (out[2:6, 0] - old[2:6, 0]) / (new[2:6, 0] - old[2:6, 0])
    assert np.all(np.diff(w_new) > 0) and 0 < w_new[0] < 0.2 and 0.8 < w_new[-1] < 1
    held = c.blend(new, 2, np.empty((0, 0)), np.full(A, -0.1))  # nothing executing: from the hold position
    assert held[2, 0] < new[2, 0] and held[2, 0] > -0.1
    ending = c.blend(new, 2, old[:3], np.zeros(A))  # the old chunk ends at the takeover: continued, not stopped
    np.testing.assert_allclose(ending, out)


def test_committed_commands_are_limited_one_step_apart_fixed_and_taken_once():
    committed = CommittedCommands(LIMITS, 0.02)
    sent = np.zeros(A)
    plan = np.tile(np.linspace(0.0, 1.0, H)[:, None], (1, A))  # far faster than the limit
    rows = committed.commit(10, 3, sent, plan, np.zeros(A))
    np.testing.assert_array_equal(rows[0], sent)
    assert np.all(np.abs(np.diff(rows, axis=0)) <= STEP + 1e-12) and rows[2, 0] > rows[1, 0] > 0
    again = committed.commit(10, 3, sent, np.zeros((H, A)), np.zeros(A))  # a later commit keeps what was fixed
    np.testing.assert_array_equal(again, rows)
    assert 11 in committed and 12 in committed
    np.testing.assert_array_equal(committed.take(12), rows[2])  # taking tick 12 forgets tick 11
    assert 11 not in committed and committed.take(12) is None


def test_committed_commands_hold_the_sent_command_without_a_plan():
    rows = CommittedCommands(LIMITS, 0.02).commit(0, 3, np.full(A, 0.1), np.empty((0, 0)), np.full(A, 0.1))
    np.testing.assert_array_equal(rows, np.full((3, A), 0.1))
