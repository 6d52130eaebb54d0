"""What a policy engine is to its callers: :class:`ChunkPolicy`, :func:`load_policy`, :func:`infer`.

Callers (the node, the in-process loop, replay, bench, eval-sim) load a model with
:func:`load_policy` and type against :class:`ChunkPolicy`; only this module knows which engine
runs a file. Today that is ONNX Runtime (:class:`~flow_policy_ros.runtime.onnx_policy.OnnxPolicy`);
another engine (TensorRT, an IO-binding GPU path) plugs in here without touching the callers.

:func:`infer` turns the controller's :class:`~flow_policy_ros.runtime.controller.InferenceRequest`
into its :class:`~flow_policy_ros.runtime.controller.InferenceResult`, for the node's inference
worker and the in-process loop alike: one place decides what an invalid output and a failed call
become.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from flow_policy_ros.errors import InvalidOutputError, ModelFileError, one_line
from flow_policy_ros.runtime.controller import InferenceRequest, InferenceResult
from flow_policy_ros.runtime.metadata import PolicyMetadata

#: The call :func:`infer` makes: :meth:`ChunkPolicy.predict` (a bound method or a stand-in).
PredictFn = Callable[..., np.ndarray]
#: Model file suffix -> engine.
ENGINES: dict[str, str] = {".onnx": "onnxruntime"}


@runtime_checkable
class ChunkPolicy(Protocol):
    """An exported flow policy: observation features, noise and guidance (and a committed prefix) in,
    an action chunk out.

    Attributes:
        metadata: what the model is (observation spec, H, A, control period, limits, rtc d_max, ...).
        active_provider: the engine/device that really runs it (e.g. 'CPUExecutionProvider').
        fallback_reason: why that is not the one asked for ("" when it is).
    """

    metadata: PolicyMetadata
    active_provider: str
    fallback_reason: str

    def predict(
        self,
        observation: np.ndarray,
        noise: np.ndarray | None = None,
        guidance_scale: float | None = None,
        prefix_actions: np.ndarray | None = None,
        prefix_length: int | np.ndarray | None = None,
        images: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Action chunk(s) (H, A) / (B, H, A) float32, rad, every value finite.

        observation: (obs_dim,) / (B, obs_dim) float32, raw units, in ``metadata.observation`` order.
        noise: x0 (H, A) / (B, H, A); None = the next draw of the policy's own seeded stream.
        guidance_scale: CFG weight w; None = the model's default.
        prefix_actions, prefix_length: the committed prefix (rtc models; rows >= d ignored).
        images: image feature name (``image.<camera>``) -> uint8 (Hc, Wc, 3) / (B, Hc, Wc, 3) RGB frame,
            one per camera in ``metadata.observation.image_features`` (camera models only).
        Raises ObservationError for a bad input, InvalidOutputError for an invalid chunk.
        """
        ...

    def sample_noise(self, batch: int | None = None) -> np.ndarray:
        """The next x0 of the policy's own stream: (H, A) or (batch, H, A) float32 (replay draws it once
        per decision, as the node does)."""
        ...

    def reseed(self, seed: int) -> None:
        """Restart the noise stream from ``seed`` (an episode's result then depends on its seed alone)."""
        ...


def load_policy(path: str | Path, *, providers: Sequence[str] | None = None, intra_op_num_threads: int = 1,
                seed: int = 0, warmup: int = 3, output_margin: float | None = None) -> ChunkPolicy:
    """Load the model at ``path`` with the engine for its file type, checked and warmed up.

    Args:
        path: the model file (``.onnx``).
        providers: execution-provider preference (default CUDA, then CPU; CPU is always the fallback).
        intra_op_num_threads: engine threads per op (1 gives the steadiest p99 on 2 cores).
        seed: seed of the noise stream.
        warmup: inference calls at load (at least one is always made: it checks the output, also
            against the training action range + ``output_margin`` range widths; None = the default).
    Raises ModelFileError naming the file when it is missing, of an unknown type, or inconsistent.
    """
    path = Path(path)
    engine = ENGINES.get(path.suffix.lower())
    if engine is None:
        raise ModelFileError(f"{path}: unknown model file type {path.suffix!r}, expected one of {sorted(ENGINES)}")
    from flow_policy_ros.runtime.onnx_policy import OnnxPolicy

    margin = {} if output_margin is None else {"output_margin": output_margin}
    return OnnxPolicy(path, providers=providers, intra_op_num_threads=intra_op_num_threads, seed=seed, warmup=warmup, **margin)


def infer(predict: PredictFn, request: InferenceRequest, *, hold_on_error: bool = True) -> InferenceResult:
    """Run ``predict`` (a :meth:`ChunkPolicy.predict`) on ``request``; the result carries its bookkeeping.

    An :class:`~flow_policy_ros.errors.InvalidOutputError` (the model ran, its chunk failed
    validation) becomes a result with ``invalid_output`` set. A finite chunk outside the model's
    training action range is judged by the controller, where the ``output_margin`` setting is
    (``PolicyController`` counts it in ``invalid_outputs`` like these, and holds). Any other exception becomes a result
    with a one-line ``error`` when ``hold_on_error`` (the node: a failing model holds the robot,
    it does not kill the node), else it propagates (the in-process evaluation: a failing call is
    a bug to see). ``latency_s`` is the wall time of the call (s); actions are float64 (H, A) rad.
    """
    kwargs: dict[str, object] = {"guidance_scale": request.guidance_scale}
    if request.prefix_length:
        kwargs.update(prefix_actions=request.prefix_actions, prefix_length=request.prefix_length)
    if request.images is not None:  # camera models: the frames paired with this observation
        kwargs["images"] = request.images
    invalid = False
    start_ns = time.perf_counter_ns()
    try:
        actions, error = np.asarray(predict(request.observation, **kwargs), dtype=np.float64), None
    except InvalidOutputError as exc:
        actions, error, invalid = None, one_line(exc), True
    except Exception as exc:  # noqa: BLE001 - any inference failure must hold the robot, not kill the node
        if not hold_on_error:
            raise
        actions, error = None, f"{type(exc).__name__}: {one_line(exc)}"
    latency_s = (time.perf_counter_ns() - start_ns) * 1e-9
    return InferenceResult.for_request(request, latency_s, actions, error, invalid, scored(predict, error))


def scored(predict: PredictFn, error: str | None) -> float | None:
    """The observation log-likelihood of the call ``predict`` just made (its policy's
    ``last_log_likelihood``, models with a density), or None (no density, or the call failed)."""
    score = getattr(getattr(predict, "__self__", None), "last_log_likelihood", None)
    return None if error is not None or score is None else float(np.asarray(score).reshape(-1)[0])
