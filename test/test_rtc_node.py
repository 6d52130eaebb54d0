"""policy_node with real-time chunking and an injected inference delay, over DDS (issue 21).

The node runs a tiny real RTC model (H 16, d_max 8) with ``inject_delay_ms`` (the inference thread
hands each result back that much later): at 100 ms (5 ticks) the execution horizon stretches by
itself, commands keep flowing at the tick rate, nothing is dropped, and ``/diagnostics`` carries
the measured delay, prefix and horizon; at 400 ms (20 ticks: beyond d_max and the chunk) the node
keeps running and says why the arm holds between chunks.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from flow_policy_ros.policy.config import IIWA_VELOCITY_LIMIT

pytestmark = pytest.mark.slow

DT = 0.02


@pytest.fixture(scope="module")
def rtc_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factory import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("rtc") / "rtc.onnx", seed=4, horizon=16, rtc_max_delay=8,
                           observation={"fields": ["joint_positions", "goal"]})


@pytest.fixture
def robot():
    from fake_robot import FakeRobot

    r = FakeRobot()
    try:
        yield r
    finally:
        r.close()


def params(model: Path, delay_ms: float) -> dict[str, object]:
    return {"model_path": str(model), "providers": ["CPUExecutionProvider"], "warmup": 1, "chunking": "auto",
            "inject_delay_ms": delay_ms}


def test_node_under_100_ms_delay_stretches_the_horizon_and_keeps_commanding(rtc_model, node_process, robot):
    node_process(params=params(rtc_model, 100.0))
    robot.wait_for(lambda: len(robot.commands) > 0, 20.0, "the first command")
    robot.wait_for(lambda: robot.diagnostics and int(robot.diagnostics[-1].get("chunks_received", "0")) >= 10, 20.0,
                   "ten chunks")
    start = time.monotonic()
    time.sleep(2.0)
    assert 40 <= len(robot.commands_between(start, start + 2.0)) / 2.0 <= 55  # no stall under delay
    with robot.lock:
        diag = dict(robot.diagnostics[-1])
        commands = [c for _, c in robot.commands]
    assert diag["state"] == "running" and diag["timing_warning"] == ""
    assert 4 <= int(diag["rtc_delay_ticks"]) <= 8 and int(diag["rtc_max_delay"]) == 8
    assert int(diag["rtc_execution_horizon"]) >= int(diag["rtc_prefix_length"]) >= int(diag["rtc_delay_ticks"])
    assert diag["rtc_late_discarded"] == "0" and diag["invalid_outputs"] == "0" and diag["deadline_fallbacks"] == "0"
    step = np.array(IIWA_VELOCITY_LIMIT) * DT
    for previous, command in zip(commands, commands[1:]):
        assert np.all(np.abs(command - previous) <= step + 1e-9)


def test_node_under_a_delay_beyond_the_model_says_so_on_diagnostics(rtc_model, node_process, robot):
    node_process(params=params(rtc_model, 400.0))
    robot.wait_for(lambda: len(robot.commands) > 0, 20.0, "the first command")
    robot.wait_for(lambda: any("exceeds the model's d_max 8" in d.get("timing_warning", "") for d in robot.diagnostics),
                   20.0, "a timing warning with the figures")
    with robot.lock:
        diag = next(d for d in reversed(robot.diagnostics) if d.get("timing_warning"))
    assert diag["state"] == "running" and "then holds" in diag["timing_warning"]
    assert int(diag["rtc_delay_ticks"]) >= 19
