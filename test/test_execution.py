"""StreamExecution (and the Execution interface): one limited command per tick, the owed command, rtc rows."""

from __future__ import annotations

import numpy as np

from flow_policy_ros.contract import IIWA_JOINT_NAMES, JointLimits, ObservationSpec
from flow_policy_ros.runtime.chunking import ActionChunk, make_scheduler
from flow_policy_ros.runtime.controller_config import ControllerConfig, ControllerCounters
from flow_policy_ros.runtime.decisions import Command
from flow_policy_ros.runtime.execution import Execution, StreamExecution, plan_from
from flow_policy_ros.runtime.safety import CommandLimiter, SafetyLimits
from flow_policy_ros.runtime.tick_clock import TickClock
from flow_policy_ros.runtime.tracking import ArmTracking
from flow_policy_ros.runtime.trajectory_execution import TrajectoryExecution

H, A = 8, 7
P = 20_000_000
LIMITS = SafetyLimits.from_joint_limits(JointLimits())
STEP = LIMITS.velocity * P * 1e-9
SPEC = ObservationSpec(joint_names=IIWA_JOINT_NAMES, fields=("joint_positions", "goal"))


def build(cls: type[Execution] = StreamExecution, chunking: str = "receding_horizon") -> Execution:
    config = ControllerConfig(SPEC, H, P * 1e-9, "stream" if cls is StreamExecution else "trajectory", chunking,
                              rtc_max_delay=3)
    scheduler = make_scheduler(config.chunking, H, config.replan_every, config.ensemble_decay)
    clock = TickClock(P)
    tracking = ArmTracking()
    tracking.observe(np.zeros(A))
    return cls(config, LIMITS, scheduler, CommandLimiter(LIMITS, config.period_s), clock, tracking,
               ControllerCounters())


def ramp(value: float = 0.01) -> np.ndarray:
    return np.outer(np.arange(1, H + 1) * value, np.ones(A))


def at_tick(ex: Execution, tick: int) -> None:
    ex.clock.advance(tick * P)
    ex.begin_tick(tick)


def test_both_executions_implement_the_one_interface():
    for cls in (StreamExecution, TrajectoryExecution):
        ex = build(cls)
        assert isinstance(ex, Execution)


def test_one_limited_command_per_tick_with_the_chunks_stamp_first():
    ex = build()
    at_tick(ex, 0)
    ex.scheduler.add_chunk(ActionChunk(ramp(0.5), 0), 0)  # far faster than the velocity limit
    ex.pending_stamp_ns = 123
    first = ex.on_running_tick(0, due=False)
    assert [type(d) for d in first] == [Command] and first[0].obs_stamp_ns == 123
    np.testing.assert_allclose(first[0].positions, np.full(A, STEP))
    at_tick(ex, 1)
    second = ex.on_running_tick(1, due=False)[0]
    assert second.obs_stamp_ns is None and np.all(np.abs(second.positions - first[0].positions) <= STEP + 1e-12)
    assert ex.counters.commands_sent == 2 and ex.counters.limiter_clipped == 2


def test_a_due_tick_owes_its_command_to_the_new_chunk():
    ex = build()
    at_tick(ex, 0)
    assert ex.on_running_tick(0, due=True) == []  # waits for the chunk
    ex.scheduler.add_chunk(ActionChunk(ramp(), 0), 0)
    out = ex.on_chunk(0, 0, 0, ramp())
    assert out[0].tick == 0
    at_tick(ex, 1)
    assert ex.counters.late_first_commands == 0


def test_an_owed_command_never_served_is_counted_at_the_next_tick():
    ex = build()
    at_tick(ex, 0)
    ex.on_running_tick(0, due=True)
    at_tick(ex, 1)
    assert ex.counters.late_first_commands == 1
    assert ex.on_chunk(1, 0, 0, ramp()) == []  # not owed any more


def test_a_late_observation_sends_the_old_chunks_command_first():
    ex = build()
    at_tick(ex, 0)
    ex.scheduler.add_chunk(ActionChunk(ramp(), 0), 0)
    at_tick(ex, 4)
    assert ex.on_running_tick(4, due=True) == []
    assert ex.late_command(4 * P + P // 2, running=True) == []  # not late yet: the chunk will bring it
    out = ex.late_command(4 * P + 3 * P // 4, running=True)
    assert out[0].tick == 4 and ex.counters.late_first_commands == 1
    np.testing.assert_allclose(out[0].positions, np.minimum(ramp()[4], STEP))  # the old chunk, one step from the arm


def test_rtc_rows_start_with_the_command_sent_and_are_sent_exactly():
    ex = build(chunking="rtc")
    at_tick(ex, 0)
    ex.scheduler.add_chunk(ActionChunk(ramp(), 0), 0)
    assert ex.commit_prefix(0, 3).shape == (0, A)  # nothing sent at tick 0 yet
    sent = ex.on_running_tick(0, due=True)[0].positions  # rtc: covered by the old chunk, sent now
    rows = ex.commit_prefix(0, 3)
    np.testing.assert_array_equal(rows[0], sent)
    for k in (1, 2):
        at_tick(ex, k)
        ex.tracking.observe(np.full(A, 0.3))  # whatever the arm does
        np.testing.assert_array_equal(ex.on_running_tick(k, due=False)[0].positions, rows[k])
    ex.drop_plan()
    assert 3 not in ex.committed


def test_stream_stop_sends_nothing_and_plan_from_covers_the_newest_chunk():
    ex = build()
    assert ex.stop("stale") == []
    at_tick(ex, 0)
    ex.scheduler.add_chunk(ActionChunk(ramp(), 0), 0)
    np.testing.assert_array_equal(plan_from(ex.scheduler, 2, 0), ramp()[2:])
    assert plan_from(ex.scheduler, H + 1, 0).shape == (0, 0)
