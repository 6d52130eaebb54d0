"""runtime/output_check.py: which inference results may not be executed, and what each one counts."""

from __future__ import annotations

import numpy as np

from flow_policy_ros.contract import ObservationSpec
from flow_policy_ros.runtime.controller_config import ControllerConfig, ControllerCounters
from flow_policy_ros.runtime.decisions import InferenceResult
from flow_policy_ros.runtime.ood import ObservationRange
from flow_policy_ros.runtime.output_check import result_problem
from flow_policy_ros.runtime.prefix_committer import PrefixCommitter

H, A = 4, 7


def check(actions, error=None, invalid=False, action_range=None, prefix_length=0):
    config = ControllerConfig(ObservationSpec(), H, 0.02, action_range=action_range)
    counters = ControllerCounters()
    result = InferenceResult(0, 0, 0.001, actions, error, prefix_length=prefix_length, invalid_output=invalid)
    actions = None if actions is None else np.asarray(actions, np.float64)
    return result_problem(result, actions, config, A, PrefixCommitter(config, A, counters), counters), counters


def test_a_good_chunk_passes_and_counts_nothing():
    problem, counters = check(np.zeros((H, A)))
    assert problem == "" and counters.invalid_outputs == counters.inference_errors == 0


def test_errors_shapes_and_nan_are_named_and_counted():
    problem, counters = check(None, error="session died")
    assert problem == "inference failed: session died" and counters.inference_errors == 1
    problem, counters = check(None, error="NaN in output", invalid=True)
    assert problem == "invalid model output: NaN in output" and counters.invalid_outputs == 1
    problem, counters = check(np.zeros((H + 1, A)))
    assert "shape (5, 7), expected (4, 7)" in problem and counters.invalid_outputs == 1
    bad = np.zeros((H, A))
    bad[1, 2] = np.nan
    problem, counters = check(bad)
    assert "1 NaN/inf values" in problem and counters.invalid_outputs == 1


def test_a_chunk_beyond_the_training_action_range_is_invalid():
    labels = tuple(f"j{i}" for i in range(A))
    action_range = ObservationRange(np.full(A, -1.0), np.full(A, 1.0), labels)
    problem, counters = check(np.full((H, A), 0.9), action_range=action_range)
    assert problem == "" and counters.invalid_outputs == 0
    problem, counters = check(np.full((H, A), 3.0), action_range=action_range)
    assert problem.startswith("invalid model output: ") and counters.invalid_outputs == 1
