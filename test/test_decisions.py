"""Decision dataclasses: a result carries its request's identity back."""

from __future__ import annotations

import numpy as np

from flow_policy_ros.runtime import controller, decisions
from flow_policy_ros.runtime.decisions import InferenceRequest, InferenceResult


def test_result_for_request_carries_tick_stamps_generation_and_prefix_length():
    request = InferenceRequest(np.zeros(10, np.float32), tick=7, received_ns=11, stamp_ns=9, generation=2,
                               guidance_scale=None, prefix_actions=np.zeros((8, 7)), prefix_length=3)
    result = InferenceResult.for_request(request, 0.004, error="boom", invalid_output=True)
    assert (result.tick, result.received_ns, result.stamp_ns, result.generation, result.prefix_length) == (7, 11, 9, 2, 3)
    assert result.latency_s == 0.004 and result.error == "boom" and result.invalid_output and result.actions is None


def test_the_controller_module_still_exports_the_decisions():
    for name in ("Command", "Trajectory", "Stop", "InferenceRequest", "InferenceResult"):
        assert getattr(controller, name) is getattr(decisions, name)
