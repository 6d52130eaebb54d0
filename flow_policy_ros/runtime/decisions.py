"""What the policy controller decides, and what comes back from inference (plain dataclasses).

The :class:`~flow_policy_ros.runtime.controller.PolicyController` takes events and returns
decisions; the caller (``policy_node`` over DDS, or the in-process closed loop) carries them out:

* a :class:`Command` (stream mode: one action per tick, for a forward position controller);
* a :class:`Trajectory` (trajectory mode: one chunk as a JointTrajectory);
* a :class:`Stop` (trajectory mode, on entering a hold: an empty JointTrajectory, so a
  JointTrajectoryController holds its setpoint instead of finishing a chunk computed from data
  no longer trusted);
* an :class:`InferenceRequest`, answered later with an :class:`InferenceResult`.

Units: rad, ns (the caller's clock), s for latencies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Command:
    """Stream mode: publish ``positions`` (A,) rad, the command of tick ``tick``.

    ``obs_stamp_ns`` is set on the first command of a new chunk: the stamp of the observation
    it was computed from (for the obs→command latency), else None.
    """

    tick: int
    positions: np.ndarray
    obs_stamp_ns: int | None = None


@dataclass(frozen=True)
class Trajectory:
    """Trajectory mode: publish ``points`` (K, A) rad; point i applies at tick ``tick + i``.

    ``stamp_ns`` is when point 0 applies (the header stamp), on the caller's clock.
    """

    tick: int
    stamp_ns: int
    points: np.ndarray
    obs_stamp_ns: int | None = None


@dataclass(frozen=True)
class Stop:
    """Trajectory mode: publish an empty JointTrajectory (a JointTrajectoryController stops)."""

    reason: str


@dataclass(frozen=True)
class InferenceRequest:
    """Run the policy on ``observation`` (obs_dim,) float32 and hand the result back.

    ``tick``, ``received_ns``, ``stamp_ns`` and ``generation`` must come back unchanged in the
    :class:`InferenceResult`.
    """

    observation: np.ndarray
    tick: int
    received_ns: int
    stamp_ns: int
    generation: int
    guidance_scale: float | None
    prefix_actions: np.ndarray | None = None  # (H, A) rad, rows >= prefix_length unused (rtc)
    prefix_length: int = 0
    #: camera models: image feature name (``image.<camera>``) -> its (Hc, Wc, 3) uint8 RGB frame
    #: paired with this observation; None for a state-only model.
    images: Mapping[str, np.ndarray] | None = None


Decision = Command | Trajectory | Stop | InferenceRequest


@dataclass(frozen=True)
class InferenceResult:
    """One finished inference for the request of the same ``tick``/``generation``.

    Attributes:
        tick: the request's tick (the chunk's first action applies at it).
        received_ns: receipt time of the observation (caller's clock).
        latency_s: wall time of the inference call (s).
        actions: (H, A) joint targets (rad), or None when ``error`` is set.
        error: one line describing why inference failed, else None.
        stamp_ns: the observation's header stamp (0 = unknown: ``received_ns`` is used).
        generation: the request's goal generation.
        invalid_output: ``error`` is the model's output failing validation (counted as an
            invalid output, not an inference error).
        log_likelihood: the observation's score from the same call (output
            ``observation_log_likelihood`` of a model with a density, nats), else None.
    """

    tick: int
    received_ns: int
    latency_s: float
    actions: np.ndarray | None = None
    error: str | None = None
    stamp_ns: int = 0
    generation: int = 0
    prefix_length: int = 0
    invalid_output: bool = False
    log_likelihood: float | None = None

    @classmethod
    def for_request(cls, request: InferenceRequest, latency_s: float, actions: np.ndarray | None = None,
                    error: str | None = None, invalid_output: bool = False,
                    log_likelihood: float | None = None) -> InferenceResult:
        return cls(request.tick, request.received_ns, latency_s, actions, error, request.stamp_ns, request.generation,
                   request.prefix_length, invalid_output, log_likelihood)
