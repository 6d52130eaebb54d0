"""StageLatencies: per-stage windows, percentiles in ms, /diagnostics keys for every stage."""

from __future__ import annotations

import threading

import pytest

from flow_policy_ros.runtime.latency import STAGES, StageLatencies


def test_percentiles_in_ms_and_a_window_of_the_latest_samples():
    latencies = StageLatencies(window=100)
    for i in range(200):  # 0..199 ms; the window keeps 100..199
        latencies.add("inference", i * 1e-3)
    latencies.add_ns("receipt", 2_500_000)
    assert latencies.count("inference") == 100
    assert latencies.percentile_ms("inference", 50) == pytest.approx(149.5)
    assert latencies.percentile_ms("receipt", 99) == pytest.approx(2.5)
    assert latencies.percentile_ms("publish", 50) is None


def test_diagnostic_values_name_every_stage_and_say_nan_when_empty():
    latencies = StageLatencies()
    latencies.add("obs_to_command", 0.0012345)
    values = latencies.diagnostic_values()
    assert set(values) == {f"stage_{s}_p{q}_ms" for s in STAGES for q in (50, 99)}
    assert values["stage_obs_to_command_p50_ms"] == "1.234"
    assert values["stage_handoff_p99_ms"] == "nan"
    with pytest.raises(KeyError):
        latencies.add("no_such_stage", 1.0)


def test_adding_from_two_threads_while_reading_loses_nothing():
    latencies = StageLatencies(window=10_000)

    def add() -> None:
        for _ in range(2000):
            latencies.add("handoff", 1e-6)

    threads = [threading.Thread(target=add) for _ in range(2)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        latencies.summary_ms()
    for t in threads:
        t.join()
    assert latencies.count("handoff") == 4000
