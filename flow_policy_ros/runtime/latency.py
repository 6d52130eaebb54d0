"""Per-stage latency of the policy's decision path, from a joint state to the command it causes.

``policy_node`` (and the inference worker) time each stage of the path one chunk takes and
publish the percentiles on ``/diagnostics`` as ``stage_<name>_p50_ms`` / ``_p99_ms``; ``flow-policy
bench --ros`` reads them back. The stages, in path order (see :data:`STAGES`), add up to about
``obs_to_command`` (each has its own sample window, so the sums agree on medians, not exactly).

Intervals inside one process are taken with ``time.perf_counter_ns``; ``receipt`` and
``obs_to_command`` compare the message's ``header.stamp`` with the node's clock, which is the
publisher's clock when both run on one machine (sim_node stamps with wall time).
Thread-safe: the worker thread and the executor thread both add samples.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

#: Stage name -> what it spans (path order).
STAGES: dict[str, str] = {
    "receipt": "joint_states header.stamp -> the node's callback starts (publisher, DDS, executor wake-up)",
    "assembly": "callback start -> inference request made (message to numpy by joint name, controller, observation)",
    "handoff": "request submitted -> inference starts (inference-thread wake-up; ~0 inline)",
    "inference": "the model call (OnnxPolicy.predict: input checks, noise, ONNX Runtime run)",
    "return": "inference done -> result taken on the executor (guard-condition wake-up; ~0 inline)",
    "scheduling": "result taken -> decision made (PolicyController.on_inference_result)",
    "publish": "decision -> publish() returned (message conversion, rclpy publish)",
    "obs_to_command": "joint_states header.stamp -> publish of the first command computed from it",
}
#: The camera path of a camera model, per frame (off the joint-state path, so not in :data:`STAGES`
#: and its sum); ``policy_node`` publishes them beside the others, e.g. ``stage_image_decode_p50_ms``.
IMAGE_STAGES: dict[str, str] = {
    "image_receipt": "camera frame header.stamp -> the node's image callback starts",
    "image_decode": "image callback start -> frame as (H, W, 3) uint8 RGB checked (numpy for Image, Pillow for jpeg/png)",
}
#: Samples kept per stage: 1000 chunks are 80 s at 50 Hz with replan_every 4.
DEFAULT_WINDOW = 1000


class StageLatencies:
    """Rolling windows of per-stage durations (s); percentiles in ms.

    Args:
        window: samples kept per stage (the latest ones).
        stages: the stage names (default :data:`STAGES`; :data:`IMAGE_STAGES` for the camera path).
    """

    def __init__(self, window: int = DEFAULT_WINDOW, stages: dict[str, str] = STAGES) -> None:
        self._lock = threading.Lock()
        self._samples: dict[str, deque] = {name: deque(maxlen=window) for name in stages}

    def add(self, stage: str, seconds: float) -> None:
        """One duration (s) of ``stage`` (a key of :data:`STAGES`)."""
        with self._lock:
            self._samples[stage].append(seconds)

    def add_ns(self, stage: str, nanoseconds: int) -> None:
        """One duration (ns) of ``stage``."""
        self.add(stage, nanoseconds * 1e-9)

    def count(self, stage: str) -> int:
        with self._lock:
            return len(self._samples[stage])

    def percentile_ms(self, stage: str, q: float) -> float | None:
        """The ``q``-th percentile (ms) of ``stage``, None without samples."""
        with self._lock:
            samples = np.fromiter(self._samples[stage], dtype=np.float64)
        return float(np.percentile(samples, q)) * 1e3 if samples.size else None

    def summary_ms(self, quantiles: tuple[float, ...] = (50, 99)) -> dict[str, float | None]:
        """``{'<stage>_p<q>_ms': value}`` for every stage and quantile (None without samples)."""
        return {f"{stage}_p{q:g}_ms": self.percentile_ms(stage, q) for stage in self._samples for q in quantiles}

    def diagnostic_values(self) -> dict[str, str]:
        """The summary as /diagnostics key-values: ``stage_<name>_p50_ms`` -> '0.123' ('nan' when empty)."""
        return {f"stage_{key}": "nan" if value is None else f"{value:.3f}" for key, value in self.summary_ms().items()}
