"""TickClock and RunState: tick numbering from event times, deadline misses, jitter, states and reasons."""

from __future__ import annotations

import pytest

from flow_policy_ros.errors import SafetyError
from flow_policy_ros.runtime.tick_clock import STATES, RunState, TickClock

P = 20_000_000  # ns


def test_first_tick_event_is_tick_zero_and_fixes_the_grid():
    clock = TickClock(P)
    assert clock.current_tick is None
    with pytest.raises(SafetyError, match="no tick"):
        clock.tick_ns(0)
    assert clock.advance(5_000) == (0, 0)
    assert clock.tick_ns(3) == 5_000 + 3 * P and clock.current_tick == 0


def test_ticks_round_to_the_nearest_period_and_count_skipped_ones():
    clock = TickClock(P)
    clock.advance(0)
    assert clock.advance(P + P // 3) == (1, 0)  # late but nearer tick 1
    assert clock.advance(4 * P - P // 3) == (4, 2)  # ticks 2 and 3 skipped: deadline misses
    assert clock.current_tick == 4


def test_an_early_callback_for_a_served_tick_is_ignored():
    clock = TickClock(P)
    clock.advance(0)
    clock.advance(P)
    assert clock.advance(P + P // 4) == (None, 0)
    assert clock.current_tick == 1


def test_jitter_is_the_distance_from_the_nominal_spacing():
    clock = TickClock(P)
    clock.advance(0)
    clock.advance(P + 1_000_000)  # 1 ms late
    clock.advance(3 * P)  # one tick skipped, on time relative to t0 but 1 ms early relative to the last
    assert list(clock.jitter_s) == pytest.approx([1e-3, 1e-3])


def test_period_must_be_positive():
    with pytest.raises(SafetyError, match="period"):
        TickClock(0)


def test_run_state_reasons_and_retry():
    state = RunState()
    assert state.state == "waiting" and state.state in STATES
    state.set("running", "ignored")
    assert state.reason == ""
    assert state.stops_robot("stale") and state.stops_robot("error") and state.stops_robot("hold")
    assert not state.stops_robot("waiting")
    state.set("hold", "out of distribution")
    assert state.reason == "out of distribution" and not state.stops_robot("error")  # not running: nothing to stop
    state.set("error", "inference failed")
    state.retry_tick = 12
    assert state.waiting_for_retry(11) and not state.waiting_for_retry(12)
    with pytest.raises(SafetyError, match="state must be one of"):
        state.set("paused")
