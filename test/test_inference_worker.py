"""InferenceWorker: the inference thread hands back the chunk with its request's bookkeeping, or the error."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from flow_policy_ros.runtime.controller import InferenceRequest
from flow_policy_ros.runtime.inference_worker import InferenceWorker

H = 4


def request(tick: int) -> InferenceRequest:
    return InferenceRequest(np.array([1.0], np.float32), tick, received_ns=123 + tick, stamp_ns=100, generation=2,
                            guidance_scale=2.0)


@pytest.mark.parametrize("fails", [False, True])
def test_inference_worker_returns_result_or_error(fails):
    """A result carries the request's tick, times and generation; an exception becomes a one-line error
    string (the controller then holds); a second request while busy is refused."""
    release = threading.Event()

    def predict(observation: np.ndarray, guidance_scale: float) -> np.ndarray:
        guidance = guidance_scale
        release.wait(5.0)
        if fails:
            raise RuntimeError("boom\nsecond line")
        return np.full((H, 7), guidance) + observation[0]

    worker = InferenceWorker(predict)
    try:
        assert worker.submit(request(7))
        assert not worker.submit(request(8))
        assert worker.busy and worker.poll() is None
        release.set()
        deadline = time.monotonic() + 5.0
        while (result := worker.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert result is not None and result.tick == 7 and result.received_ns == 130
        assert result.stamp_ns == 100 and result.generation == 2 and result.latency_s > 0
        if fails:
            assert result.actions is None and result.error == "RuntimeError: boom second line"
        else:
            assert result.error is None and np.all(result.actions == 3.0)
        assert not worker.busy
    finally:
        worker.stop()
    assert not worker.submit(request(9)), "a stopped worker takes no request"


@pytest.mark.parametrize("inline", [False, True])
def test_worker_records_its_stages_and_inline_result_is_ready_at_once(inline):
    """Threaded or inline, the result is the same; the worker records handoff, inference and
    return once per request. Inline, the result is ready when submit returns (no thread, no on_done)."""
    from flow_policy_ros.runtime.latency import StageLatencies

    done = threading.Event()
    latencies = StageLatencies()
    worker = InferenceWorker(lambda obs, guidance_scale: np.full((H, 7), guidance_scale) + obs[0], on_done=done.set, inline=inline,
                             latencies=latencies)
    try:
        assert worker.submit(request(3))
        if inline:
            assert not worker.busy and not done.is_set()
            result = worker.poll()
        else:
            assert done.wait(5.0)
            result = worker.poll()
        assert result is not None and result.tick == 3 and np.all(result.actions == 3.0)
        assert worker.poll() is None
        assert [latencies.count(s) for s in ("handoff", "inference", "return")] == [1, 1, 1]
        assert latencies.count("receipt") == 0
        assert latencies.percentile_ms("inference", 50) == pytest.approx(result.latency_s * 1e3)
    finally:
        worker.stop()
    assert not worker.submit(request(4))
    with pytest.raises(ValueError, match="inference thread"):
        InferenceWorker(lambda obs, guidance_scale: obs, inline=True, delay_s=0.1)


def test_injected_delay_holds_the_result_back_and_passes_the_prefix():
    seen = {}

    def predict(observation: np.ndarray, guidance_scale: float, prefix_actions=None, prefix_length=0) -> np.ndarray:
        seen.update(prefix_length=prefix_length)
        return np.zeros((H, 7))

    worker = InferenceWorker(predict, delay_s=0.3)
    try:
        req = InferenceRequest(np.zeros(1, np.float32), 1, 0, 0, 0, 1.0, np.ones((H, 7)), 2)
        start = time.monotonic()
        assert worker.submit(req)
        while (result := worker.poll()) is None and time.monotonic() - start < 5.0:
            time.sleep(0.005)
        assert time.monotonic() - start >= 0.3 and result.prefix_length == 2 and seen["prefix_length"] == 2
    finally:
        worker.stop()


def test_an_invalid_model_output_is_handed_over_as_such_and_counted_by_the_controller():
    """OnnxPolicy raises InvalidOutputError for a NaN or wrongly shaped chunk: the worker marks the result
    invalid_output, and the controller counts it under invalid_outputs (not inference_errors) and holds."""
    from flow_policy_ros.contract import IIWA_JOINT_NAMES, JointLimits, ObservationSpec
    from flow_policy_ros.errors import InvalidOutputError
    from flow_policy_ros.runtime.controller import ControllerConfig, PolicyController
    from flow_policy_ros.runtime.safety import SafetyLimits

    def predict(observation: np.ndarray, guidance_scale: float) -> np.ndarray:
        raise InvalidOutputError("m.onnx: output 'actions' has 3 NaN/inf value(s) of 56")

    spec = ObservationSpec(joint_names=IIWA_JOINT_NAMES, fields=("joint_positions",))
    ctrl = PolicyController(ControllerConfig(spec, 8, 0.02), SafetyLimits.from_joint_limits(JointLimits()))
    q = np.zeros(7)
    ctrl.on_joint_state(0, q, None, q, 0)
    ctrl.on_tick(0)
    (req,) = ctrl.on_joint_state(1_000_000, q, None, q, 1_000_000)
    worker = InferenceWorker(predict)
    try:
        worker.submit(req)
        deadline = time.monotonic() + 5.0
        while (result := worker.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        worker.stop()
    assert result.invalid_output and result.actions is None and "NaN/inf" in result.error
    ctrl.on_inference_result(result)
    assert ctrl.state == "error" and "invalid model output: m.onnx" in ctrl.reason
    assert (ctrl.counters.invalid_outputs, ctrl.counters.inference_errors) == (1, 0)
