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


def committer(replan_every: int = 4, d_max: int = 3, margin: int = 1) -> PrefixCommitter:
    config = ControllerConfig(SPEC, H, 0.02, chunking="rtc", replan_every=replan_every, rtc_max_delay=d_max,
                              rtc_margin_ticks=margin)
    return PrefixCommitter(config, A, ControllerCounters())


class Rows:
    """A prefix source that commits ``available`` rows at most: row i = tick + i on every joint."""

    def __init__(self, available: int) -> None:
        self.available = available
        self.asked: list[tuple[int, int]] = []

    def commit_prefix(self, tick: int, d: int) -> np.ndarray:
        self.asked.append((tick, d))
        n = min(d, self.available)
        return np.tile((tick + np.arange(n, dtype=float))[:, None], (1, A))


def test_length_is_the_longest_recent_delay_plus_the_margin():
    c = committer(margin=1)
    assert c.needed_length() == 1  # no delay measured yet
    for delay in (0, 2, 1):
        c.record_delay(delay)
    assert c.needed_length() == 3 and c.counters.rtc_prefix_clipped == 0
    c.record_delay(4)
    assert c.needed_length() == 5 and c.counters.rtc_prefix_clipped == 1  # beyond d_max = 3


def test_commit_clips_to_d_max_and_pads_the_prefix_to_the_horizon():
    c = committer(d_max=3)
    source = Rows(available=10)
    prefix, d = c.commit(7, 5, source)
    assert source.asked == [(7, 3)] and d == 3 and prefix.shape == (H, A)
    np.testing.assert_array_equal(prefix[:3, 0], [7, 8, 9])
    assert not prefix[3:].any() and c.counters.rtc_prefix_ticks == 3
    assert c.commit(7, 2, Rows(available=0)) == (None, 0)  # nothing to continue: plain sampling


def test_reproduction_check_uses_the_request_in_flight():
    c = committer()
    prefix, d = c.commit(2, 2, Rows(available=5))
    chunk = np.zeros((H, A))
    chunk[:d] = prefix[:d] + 5e-6
    assert c.reproduces(chunk, d)
    chunk[1, 3] += 1e-3
    assert not c.reproduces(chunk, d)
    c.commit(2, 2, Rows(available=0))
    assert not c.reproduces(chunk, d)  # no prefix was requested


def test_refusal_names_both_numbers_and_late_chunks_are_counted():
    c = committer(replan_every=2)
    c.record_delay(3)
    needed = c.needed_length()
    assert c.refusal(needed) == ("rtc: the prefix needs 4 ticks (inference took up to 3 ticks, margin 1) but "
                                 "replan_every is 2: set replan_every >= 4")
    assert committer(replan_every=4).refusal(4) == ""
    c.count_if_late(tick=6, request_tick=4, d=2)
    c.count_if_late(tick=5, request_tick=4, d=2)
    c.count_if_late(tick=9, request_tick=4, d=0)
    assert c.counters.rtc_late_chunks == 1


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
