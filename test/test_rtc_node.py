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


def test_diagnostics_level_and_figures_follow_the_timing_warning():
    """policy_diagnostics (no DDS): the rtc figures are there, a delay beyond d_max is a WARN with the
    figures in the message, one the chunk cannot cover an ERROR, a deadline hold a WARN in any mode."""
    from types import SimpleNamespace

    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticStatus

    from flow_policy_ros.contract import IIWA_JOINT_NAMES, JointLimits, ObservationSpec
    from flow_policy_ros.ros.diagnostics import policy_diagnostics
    from flow_policy_ros.runtime.controller import ControllerConfig, PolicyController
    from flow_policy_ros.runtime.safety import SafetyLimits

    spec = ObservationSpec(joint_names=IIWA_JOINT_NAMES, fields=("joint_positions", "goal"))
    ctrl = PolicyController(ControllerConfig(spec, 32, DT, chunking="rtc", rtc_max_delay=12, guidance_scale=1.0),
                            SafetyLimits.from_joint_limits(JointLimits()))
    ctrl.run_state.set("running")
    policy = SimpleNamespace(active_provider="CPUExecutionProvider", fallback_reason="",
                             metadata=SimpleNamespace(name="m", model_hash="h"))

    def status():
        s = policy_diagnostics(Time(), "policy", ctrl.state, ctrl.reason, ctrl, policy, {}, []).status[0]
        return s.level, s.message, {kv.key: kv.value for kv in s.values}

    level, message, values = status()
    assert level == DiagnosticStatus.OK and message == "running" and values["timing_warning"] == ""
    assert values["rtc_max_delay"] == "12" and values["rtc_prefix_length"] == "4" and values["rtc_execution_horizon"] == "4"
    ctrl.prefix.record_delay(15)  # 300 ms
    level, message, values = status()
    assert level == DiagnosticStatus.WARN and "15 ticks (300 ms)" in message and "d_max 12" in message
    assert values["rtc_delay_ticks"] == "15" and values["rtc_prefix_length"] == "12"
    ctrl.prefix.record_delay(25)  # 500 ms: the chunk ends before the next arrives
    level, message, _ = status()
    assert level == DiagnosticStatus.ERROR and "then holds" in message
    plain = PolicyController(ControllerConfig(spec, 32, DT, guidance_scale=1.0), SafetyLimits.from_joint_limits(JointLimits()))
    plain.run_state.set("running")
    plain.execution.deadline_hold = True
    s = policy_diagnostics(Time(), "policy", "running", "", plain, policy, {}, []).status[0]
    assert s.level == DiagnosticStatus.WARN and "deadline" in s.message
