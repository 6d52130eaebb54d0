"""Tests of flow_policy_ros.runtime.chunking: receding horizon, temporal ensembling, late chunks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flow_policy_ros.runtime.chunking import (
    ActionChunk,
    RecedingHorizon,
    TemporalEnsemble,
    make_scheduler,
)

H, A = 6, 2


def chunk(start: int, offset: float = 0.0) -> ActionChunk:
    """Chunk whose action for tick t is [t + offset, -(t + offset)]: the value names its tick."""
    ticks = np.arange(start, start + H, dtype=np.float64) + offset
    return ActionChunk(np.stack([ticks, -ticks], axis=1), start)


def test_action_chunk_validates_shape():
    """A chunk must be 2-D (H, A)."""
    with pytest.raises(ValueError, match="shape"):
        ActionChunk(np.zeros(3), 0)


def test_receding_horizon_executes_replan_every_then_next_chunk():
    """Synchronous loop (evaluator): a chunk is requested every replan_every ticks and executed in order."""
    sched = RecedingHorizon(H, replan_every=3)
    starts, executed = [], []
    for tick in range(9):
        if sched.due(tick):
            starts.append(tick)
            assert sched.add_chunk(chunk(tick), tick)
        executed.append(sched.action_at(tick)[0])
    assert starts == [0, 3, 6]
    assert executed == list(range(9))


def test_receding_horizon_late_chunk_is_aligned_not_replayed():
    """A chunk for the observation at tick 2 arriving at tick 5 starts at its action for tick 5."""
    sched = RecedingHorizon(H, replan_every=2)
    sched.add_chunk(chunk(0, offset=100.0), 0)
    for tick in range(5):
        assert sched.action_at(tick)[0] == tick + 100.0
    assert sched.add_chunk(chunk(2), now_tick=5)
    assert sched.action_at(5)[0] == 5.0  # index 3 of the new chunk, ticks 2..4 dropped
    np.testing.assert_array_equal(sched.plan(6)[:, 0], [6.0, 7.0])


def test_receding_horizon_rejects_past_and_outdated_chunks():
    """Chunks entirely in the past, or from an older observation than the current chunk, are ignored."""
    sched = RecedingHorizon(H, replan_every=2)
    assert not sched.add_chunk(chunk(0), now_tick=H)
    assert sched.add_chunk(chunk(4), now_tick=4)
    assert not sched.add_chunk(chunk(3), now_tick=5)
    assert sched.action_at(5)[0] == 5.0


def test_receding_horizon_exhausted_chunk_holds():
    """When inference is slower than the chunk lasts, action_at returns None (hold), and due stays True."""
    sched = RecedingHorizon(H, replan_every=2)
    sched.add_chunk(chunk(0), 0)
    assert sched.action_at(H - 1) is not None
    assert sched.action_at(H) is None
    assert sched.due(H)


def test_ticks_must_not_go_backwards():
    """Time only moves forward."""
    sched = RecedingHorizon(H, 2)
    sched.add_chunk(chunk(0), 0)
    sched.action_at(3)
    with pytest.raises(ValueError, match="backwards"):
        sched.action_at(2)


def test_reset_drops_chunks():
    """After reset there is nothing to execute and a chunk is due."""
    for sched in (RecedingHorizon(H, 2), TemporalEnsemble(H, 2)):
        sched.add_chunk(chunk(0), 0)
        sched.reset()
        assert sched.action_at(1) is None
        assert sched.due(1)


def test_temporal_ensemble_weights_match_act_formula():
    """Action = sum_i w_i a_i / sum_i w_i with w_i = exp(-m * (start_i - start_oldest)), exactly."""
    m = 0.5
    sched = TemporalEnsemble(H, replan_every=1, decay=m)
    sched.add_chunk(chunk(0, offset=0.0), 0)
    sched.add_chunk(chunk(1, offset=10.0), 1)
    sched.add_chunk(chunk(2, offset=20.0), 2)
    w = np.array([1.0, math.exp(-m), math.exp(-2 * m)])
    expected = (w @ (np.array([0.0, 10.0, 20.0]) + 3.0)) / w.sum()
    got = sched.action_at(3)
    assert got[0] == pytest.approx(expected, abs=1e-12)
    assert got[1] == pytest.approx(-expected, abs=1e-12)


def test_temporal_ensemble_decay_zero_is_mean_and_expired_chunks_leave():
    """m = 0 gives the plain mean; a chunk stops contributing after its last tick."""
    sched = TemporalEnsemble(H, replan_every=1, decay=0.0)
    sched.add_chunk(chunk(0, offset=0.0), 0)
    sched.add_chunk(chunk(2, offset=6.0), 2)
    assert sched.action_at(H - 1)[0] == pytest.approx(H - 1 + 3.0)
    assert sched.action_at(H)[0] == pytest.approx(H + 6.0)  # chunk 0 ended at tick H-1
    assert len(sched.chunks) == 1


def test_temporal_ensemble_late_chunk_only_affects_future_and_plan():
    """A late chunk joins from the current tick on; plan() gives the ensembled future."""
    sched = TemporalEnsemble(H, replan_every=2, decay=0.0)
    sched.add_chunk(chunk(0), 0)
    assert sched.action_at(3)[0] == 3.0
    assert sched.add_chunk(chunk(1, offset=2.0), now_tick=4)
    plan = sched.plan(4)
    np.testing.assert_allclose(plan[:, 0], [5.0, 6.0, 8.0])  # ticks 4,5 averaged; 6 new chunk only
    assert not sched.due(2) and sched.due(3)


def test_make_scheduler_and_validation():
    """The factory builds both modes and refuses unknown modes and bad replan_every."""
    assert isinstance(make_scheduler("receding_horizon", H, 2), RecedingHorizon)
    assert isinstance(make_scheduler("temporal_ensemble", H, 2), TemporalEnsemble)
    with pytest.raises(ValueError, match="chunking"):
        make_scheduler("bogus", H, 2)
    with pytest.raises(ValueError, match="replan_every"):
        RecedingHorizon(H, H + 1)
    with pytest.raises(ValueError, match="horizon"):
        RecedingHorizon(H, 2).add_chunk(ActionChunk(np.zeros((H + 1, A)), 0), 0)


@pytest.mark.parametrize("mode", ["receding_horizon", "temporal_ensemble"])
def test_random_async_stream_never_replays_past_actions(mode):
    """With random inference latency, every executed action is the prediction for that very tick
    (no action from a passed tick is ever executed), and ticks are covered whenever a live chunk exists."""
    rng = np.random.default_rng(1)
    sched = make_scheduler(mode, H, 3, ensemble_decay=0.0)
    pending: list[tuple[int, ActionChunk]] = []
    for tick in range(500):
        for _arrival, c in [p for p in pending if p[0] <= tick]:
            sched.add_chunk(c, tick)
        pending = [p for p in pending if p[0] > tick]
        if not pending and sched.due(tick):
            pending.append((tick + int(rng.integers(0, H + 2)), chunk(tick)))
        action = sched.action_at(tick)
        if action is not None:
            assert action[0] == pytest.approx(tick) and action[1] == pytest.approx(-tick)


def test_auto_chunking_is_rtc_for_rtc_models_only():
    from flow_policy_ros.runtime.chunking import CHUNKING_CHOICES, resolve_chunking

    assert CHUNKING_CHOICES[0] == "auto"
    assert resolve_chunking("auto", rtc_model=True) == "rtc"
    assert resolve_chunking("auto", rtc_model=False) == "receding_horizon"
    for mode in ("receding_horizon", "temporal_ensemble"):
        assert resolve_chunking(mode, rtc_model=True) == mode
    with pytest.raises(ValueError, match="chunking must be one of"):
        resolve_chunking("ensemble", rtc_model=False)
