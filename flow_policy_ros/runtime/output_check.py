"""Whether an inference result may be executed (pure): errors, shape, NaN/inf, the training action
range, the committed prefix.

An error, a chunk of the wrong shape, a non-finite value, a chunk beyond the model's training
action range by more than ``output_margin`` range widths (:func:`~flow_policy_ros.runtime.metadata.output_range_problem`)
or one that does not reproduce its committed real-time-chunking prefix cannot be executed: the
controller holds (state ``error``) with the reason this module gives, and the counters say which
(``inference_errors`` or ``invalid_outputs``). Units: rad.
"""

from __future__ import annotations

import numpy as np

from flow_policy_ros.runtime.controller_config import ControllerConfig, ControllerCounters
from flow_policy_ros.runtime.decisions import InferenceResult
from flow_policy_ros.runtime.metadata import output_range_problem
from flow_policy_ros.runtime.prefix_committer import PrefixCommitter


def result_problem(result: InferenceResult, actions: np.ndarray | None, config: ControllerConfig, action_dim: int,
                   prefix: PrefixCommitter, counters: ControllerCounters) -> str:
    """Why ``result`` (its ``actions`` (H, A) as float64) cannot be executed ('' if it can); counts the
    inference error or invalid output in ``counters``."""
    if result.error is not None and result.invalid_output:
        counters.invalid_outputs += 1
        return f"invalid model output: {result.error}"
    if result.error is not None:
        counters.inference_errors += 1
        return f"inference failed: {result.error}"
    problem = ""
    expected = (config.horizon, action_dim)
    if actions is None or actions.shape != expected:
        problem = f"shape {None if actions is None else actions.shape}, expected {expected}"
    elif not np.all(np.isfinite(actions)):
        problem = f"{int(np.sum(~np.isfinite(actions)))} NaN/inf values"
    else:
        problem = output_range_problem(actions, config.action_range, config.output_margin)
        d = result.prefix_length
        if not problem and d and not prefix.reproduces(actions, d):
            problem = f"the chunk does not reproduce its {d}-action committed prefix"
    if problem:
        counters.invalid_outputs += 1
        return f"invalid model output: {problem}"
    return ""
