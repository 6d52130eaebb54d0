"""The decisions of one bag and the policy's predictions at them.

:func:`build_decisions` rebuilds the observation at each decision time from a
:class:`~flow_policy_ros.data.replay_source.ReplaySource` with the training windowing
(:mod:`flow_policy_ros.data.windows`) and pairs it with the target chunk that followed;
:func:`predict_batched` runs the policy on them with seeded noise (:func:`decision_noise`);
:func:`single_latency_ms` times unbatched calls.

Conventions:

- Decision times are the control ticks of :func:`dataset.action_ticks` (period = the model's
  ``control_period_s``) where the observation is defined; one decision per tick.
- Noise: for each bag, decision j (in time order) uses the j-th (H, A) block drawn from
  ``numpy.random.default_rng(seed).standard_normal`` as float32: the same stream as
  ``OnnxPolicy(seed=seed).sample_noise()`` called once per decision, so a bag recorded by a
  policy that planned every tick replays exactly.
- Invalid outputs: a decision whose chunk fails ``OnnxPolicy``'s output validation (wrong shape,
  NaN/inf: :class:`~flow_policy_ros.errors.InvalidOutputError`) is counted, kept out of every
  error metric, and held in ``--write-bag``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flow_policy_ros.data.replay_source import ReplaySource, frame_indices
from flow_policy_ros.data.timeseries import TimeSeriesError, resample_linear
from flow_policy_ros.data.windows import action_ticks, chunk_indices, observable_mask, observations_at
from flow_policy_ros.errors import BagError, InvalidOutputError, one_line
from flow_policy_ros.runtime.metadata import PolicyMetadata

DEFAULT_BATCH = 512


# --------------------------------------------------------------------------- decisions and inference


@dataclass
class Decisions:
    """Decision points of one bag.

    Attributes:
        ticks_ns: (N,) int64, decision times.
        observations: (N, obs_dim) float32, raw units.
        targets: (N, H, A) float64, what followed each decision (rad); padded steps repeat the last action.
        valid: (N, H) bool, False where the step runs past the last recorded action (not scored).
        action_ticks_ns: (K,) int64 and actions (K, A) float64: the whole recorded action series.
        measured: (N, A) float64, measured positions of the action joints at the decisions (rad).
        images: image feature name -> (N, Hc, Wc, 3) uint8, the frame each decision pairs with.
        without_frame: decision ticks left out because a camera had no frame within its max age.
    """

    ticks_ns: np.ndarray
    observations: np.ndarray
    targets: np.ndarray
    valid: np.ndarray
    action_ticks_ns: np.ndarray
    actions: np.ndarray
    measured: np.ndarray
    images: dict[str, np.ndarray] = field(default_factory=dict)
    without_frame: int = 0


def build_decisions(src: ReplaySource, meta: PolicyMetadata) -> Decisions:
    """Observations and target chunks at every tick with a defined observation (dataset windowing)."""
    io = meta.io
    try:
        ticks, actions = action_ticks(src.recording, io, src.data_config, str(src.path))
        keep = np.flatnonzero(observable_mask(src.recording, ticks, io))
        if len(keep) == 0:
            raise BagError(f"{src.path}: no decision time: the observation is never defined on the action ticks")
        obs = observations_at(src.recording, ticks[keep], io, str(src.path))
        rec = src.recording
        cols = [rec.joint_names.index(n) for n in meta.action_joint_names]
        measured = resample_linear(rec.joint_times_ns, rec.positions[:, cols], ticks[keep])
    except TimeSeriesError as exc:
        raise BagError(f"{src.path}: {exc}") from exc
    if not (np.all(np.isfinite(obs)) and np.all(np.isfinite(measured))):
        raise BagError(f"{src.path}: the recorded joint states or goal hold NaN/inf where the policy observes them")
    h = meta.horizon
    idx = chunk_indices(int(keep[0]), len(keep), h, len(ticks))
    valid = (keep[:, None] + np.arange(h)[None, :]) < len(ticks)
    dec = Decisions(ticks[keep], obs.astype(np.float32), actions[idx], valid, ticks, actions, measured)
    return _with_frames(dec, src, meta) if meta.observation.image_features else dec


def _with_frames(dec: Decisions, src: ReplaySource, meta: PolicyMetadata) -> Decisions:
    """``dec`` restricted to the decisions every camera has a frame for, with those frames."""
    index = {f.name: frame_indices(src.images[f.name], dec.ticks_ns, f.max_age_s) for f in meta.observation.image_features}
    paired = np.all([i >= 0 for i in index.values()], axis=0)
    if not paired.any():
        ages = {name: src.images[name].times_ns for name in index}
        raise BagError(f"{src.path}: no decision has a frame of every camera within its max age "
                       f"({', '.join(f'{n}: {len(t)} frames' for n, t in ages.items())} over "
                       f"{(dec.ticks_ns[-1] - dec.ticks_ns[0]) * 1e-9:.2f} s of decisions)")
    return Decisions(dec.ticks_ns[paired], dec.observations[paired], dec.targets[paired], dec.valid[paired],
                     dec.action_ticks_ns, dec.actions, dec.measured[paired],
                     {name: src.images[name].frames[i[paired]] for name, i in index.items()}, int((~paired).sum()))


def decision_noise(seed: int, count: int, horizon: int, action_dim: int) -> np.ndarray:
    """(count, H, A) float32: block j is the j-th (H, A) draw of ``default_rng(seed)`` (see module docstring)."""
    return np.random.default_rng(seed).standard_normal((count, horizon, action_dim)).astype(np.float32)


@dataclass
class Predictions:
    """The policy's chunks for every decision of a bag.

    Attributes:
        chunks: (N, H, A) float32 joint targets (rad); NaN where the output was invalid.
        invalid: (N,) bool, the decision's output failed validation (InvalidOutputError).
        first_invalid: the first invalid output's one-line reason ("" = none).
        seconds: wall time of the batched inference.
        scores: (N,) observation log-likelihood per decision (models with a density; NaN where the
            output was invalid), else None.
    """

    chunks: np.ndarray
    invalid: np.ndarray
    first_invalid: str
    seconds: float
    scores: np.ndarray | None = None


def predict_batched(policy: Any, observations: np.ndarray, noise: np.ndarray, guidance: float | None,
                    batch_size: int = DEFAULT_BATCH, images: Mapping[str, np.ndarray] | None = None) -> Predictions:
    """Run ``policy.predict`` on (N, obs_dim) + (N, H, A) noise (+ ``images``: feature name -> (N, Hc, Wc, 3)
    uint8 for a camera model) in batches.

    A batch whose output fails validation is re-run one decision at a time, so exactly the
    invalid decisions are marked.
    """
    out = np.empty(noise.shape, np.float32)
    invalid = np.zeros(len(observations), bool)
    scores = np.full(len(observations), np.nan)
    first = ""
    start = time.perf_counter()
    for lo in range(0, len(observations), batch_size):
        hi = min(lo + batch_size, len(observations))
        try:
            out[lo:hi] = policy.predict(observations[lo:hi], noise=noise[lo:hi], guidance_scale=guidance,
                                        **images_kw(images, slice(lo, hi)))
            scores[lo:hi] = _scores(policy, hi - lo)
            continue
        except InvalidOutputError:
            pass
        for i in range(lo, hi):
            try:
                out[i] = policy.predict(observations[i], noise=noise[i], guidance_scale=guidance, **images_kw(images, i))
                scores[i] = _scores(policy, 1)[0]
            except InvalidOutputError as exc:
                out[i], invalid[i] = np.nan, True
                first = first or one_line(exc)
    has_density = getattr(policy.metadata, "density", None) is not None
    return Predictions(out, invalid, first, time.perf_counter() - start, scores if has_density else None)


def _scores(policy: Any, count: int) -> np.ndarray:
    """The last call's observation log-likelihood(s) (count,), NaN for a model without a density."""
    score = getattr(policy, "last_log_likelihood", None)
    return np.full(count, np.nan) if score is None else np.asarray(score, np.float64).reshape(-1)


def images_kw(images: Mapping[str, np.ndarray] | None, index: int | slice | np.ndarray) -> dict[str, Any]:
    """``{'images': {name: frames[index]}}`` for a camera model, {} otherwise (state-only predict calls unchanged)."""
    return {"images": {name: frames[index] for name, frames in images.items()}} if images else {}


def single_latency_ms(policy: Any, observations: np.ndarray, noise: np.ndarray, guidance: float | None,
                      samples: int = 50, images: Mapping[str, np.ndarray] | None = None) -> dict[str, float | None]:
    """Unbatched latency (ms) of up to ``samples`` decisions: what a live node pays per decision
    (calls whose output is invalid are not timed)."""
    times = []
    for i in range(min(samples, len(observations))):
        start = time.perf_counter()
        try:
            policy.predict(observations[i], noise=noise[i], guidance_scale=guidance, **images_kw(images, i))
        except InvalidOutputError:
            continue
        times.append((time.perf_counter() - start) * 1e3)
    if not times:
        return {"single_p50": None, "single_p99": None, "single_samples": 0}
    return {"single_p50": float(np.percentile(times, 50)), "single_p99": float(np.percentile(times, 99)),
            "single_samples": len(times)}
