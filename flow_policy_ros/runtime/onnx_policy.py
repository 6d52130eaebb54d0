"""``OnnxPolicy``: the exported sampler in ONNX Runtime, numpy in, numpy out.

This is the runtime path of the robot: it imports neither torch nor pybullet. It refuses a
model whose metadata is missing or inconsistent with the graph, picks the execution provider
by what the session really uses (onnxruntime-gpu lists CUDA as *available* even on a machine
without a GPU, so the active providers after session creation are what count), warms up, and
owns a seeded random stream for the noise so a run can be replayed exactly.

Outputs are validated, at load and on every call: the graph's declared output shape must agree
with the metadata (rank 3, ``[B, H, A]`` where a dimension is concrete; symbolic dimensions are
accepted), the load-time check call must return a finite (H, A) chunk (else
:class:`~flow_policy_ros.errors.ModelFileError` naming the file), and :meth:`OnnxPolicy.predict`
raises :class:`~flow_policy_ros.errors.InvalidOutputError` (one line) for an output of the wrong
shape or with NaN/inf, so no caller ever receives an invalid chunk.

Two kinds of model load and run here: plain ones (inputs observation, noise, guidance_scale)
and real-time chunking ones (metadata ``rtc``; also ``prefix_actions`` and ``prefix_length``:
the first d actions are given and returned exactly). ``OnnxPolicy.rtc`` says which it is;
``predict`` feeds a plain call (d = 0) to an RTC model by itself.

Camera models (image features in the metadata's observation spec) also take one input per
camera, ``image_<camera>`` uint8 [B, Hc, Wc, 3] RGB; at load each is checked against its feature
(name, dtype uint8, shape), and ``predict(..., images={"image.<camera>": frame})`` feeds them. A
missing camera, a frame of the wrong shape or dtype is an ObservationError naming the camera,
what the model expects and what it received.
A model with an observation density (metadata ``density``) has a second output,
``observation_log_likelihood`` [B]: every call stores it in :attr:`OnnxPolicy.last_log_likelihood`
(float for one observation, (B,) for a batch; None for a model without it), so the caller gets the
score of the observation the chunk was computed from without a second inference call;
:meth:`OnnxPolicy.predict_with_score` returns both. A model whose score is NaN/inf on a typical
observation is refused at load. Observations with NaN/inf never reach the graph (``predict``
rejects them first).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from flow_policy_ros.errors import InvalidOutputError, ModelFileError, ObservationError, one_line
from flow_policy_ros.runtime.image_inputs import graph_image_feeds, image_input_name  # noqa: F401 - re-exported
from flow_policy_ros.runtime.metadata import (
    DEFAULT_OUTPUT_MARGIN,
    LOG_LIKELIHOOD_OUTPUT,
    METADATA_KEY,
    PolicyMetadata,
    output_range_problem,
)

DEFAULT_PROVIDERS: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
CPU = "CPUExecutionProvider"
EXPECTED_INPUTS = ("observation", "noise", "guidance_scale")
#: Extra inputs of a real-time chunking model (metadata ``rtc``): the committed prefix.
RTC_INPUTS = ("prefix_actions", "prefix_length")




def output_problem(actions: np.ndarray, expected: tuple[int, ...]) -> str:
    """Why ``actions`` is not a valid model output of shape ``expected``, or "" when it is.

    Valid: exactly ``expected`` (e.g. (B, H, A)), floating point, every value finite.
    """
    actions = np.asarray(actions)
    if actions.shape != tuple(expected):
        return f"output 'actions' has shape {tuple(actions.shape)}, expected {tuple(expected)}"
    if not np.issubdtype(actions.dtype, np.floating):
        return f"output 'actions' has dtype {actions.dtype}, expected float32"
    bad = ~np.isfinite(actions)
    if bad.any():
        return f"output 'actions' has {int(bad.sum())} NaN/inf value(s) of {actions.size}"
    return ""


def choose_providers(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Providers to ask the session for: the requested preference order restricted to what this
    onnxruntime build offers, always ending with the CPU provider as the fallback.

    Raises ModelFileError when the request names no provider this build knows at all.
    """
    requested = list(requested) if requested else list(DEFAULT_PROVIDERS)
    unknown = [p for p in requested if p not in available and p != CPU]
    chosen = [p for p in requested if p in available]
    if not chosen and unknown:
        raise ModelFileError(f"none of the requested providers {requested} is available (available: {list(available)})")
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def active_provider(session_providers: Sequence[str], requested: Sequence[str]) -> str:
    """The provider that actually runs the graph: the first of the session's active providers.

    When CUDA was requested but is not among ``session_providers`` (no GPU, missing CUDA
    libraries), this is the CPU provider: the fallback is visible, never silent.
    """
    if not session_providers:
        raise ModelFileError("ONNX Runtime session reports no active execution provider")
    return session_providers[0]


class OnnxPolicy:
    """An exported flow policy run by ONNX Runtime (a :class:`~flow_policy_ros.runtime.policy.ChunkPolicy`;
    load it with :func:`~flow_policy_ros.runtime.policy.load_policy`).

    Args:
        path: the .onnx file.
        providers: execution-provider preference (default CUDA, then CPU).
        intra_op_num_threads: ONNX Runtime threads per op (1 gives the steadiest p99 on 2 cores).
        seed: seed of the noise stream used when ``predict`` is not given noise.
        warmup: inference calls made at load (first calls allocate and are slow). At least one
            call is always made: it checks that the model returns a finite (H, A) chunk.
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        intra_op_num_threads: int = 1,
        seed: int = 0,
        warmup: int = 3,
        output_margin: float = DEFAULT_OUTPUT_MARGIN,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: model file not found")
        raw = self.path.read_bytes()
        model_hash = hashlib.sha256(raw).hexdigest()
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(intra_op_num_threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.requested_providers = choose_providers(providers, ort.get_available_providers())
        # ONNX Runtime logs a multi-line error when a requested GPU provider cannot start (no
        # GPU, no CUDA libraries); we report that fallback ourselves in ``fallback_reason``.
        ort.set_default_logger_severity(4)
        try:
            self.session = ort.InferenceSession(raw, options, providers=self.requested_providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for bad files
            raise ModelFileError(f"{self.path}: not a loadable ONNX model ({type(exc).__name__}: {one_line(exc)})") from exc
        finally:
            ort.set_default_logger_severity(3)
        self.active_provider = active_provider(self.session.get_providers(), self.requested_providers)
        #: Why the active provider is not the first one requested ("" when it is).
        self.fallback_reason = ""
        if self.active_provider != self.requested_providers[0]:
            self.fallback_reason = (
                f"{self.requested_providers[0]} requested but ONNX Runtime could not use it on this machine "
                f"(no GPU or missing CUDA/cuDNN libraries); running on {self.active_provider}"
            )
        try:  # a damaged file can hold names or metadata that are not UTF-8
            props = self.session.get_modelmeta().custom_metadata_map
            self.session.get_inputs(), self.session.get_outputs()
        except UnicodeDecodeError as exc:
            raise ModelFileError(f"{self.path}: damaged model: its metadata or I/O names are not UTF-8 ({exc})") from exc
        if METADATA_KEY not in props:
            raise ModelFileError(f"{self.path}: metadata key '{METADATA_KEY}' missing; export it with `flow-policy export`")
        self.metadata = PolicyMetadata.from_json(props[METADATA_KEY], where=str(self.path), model_hash=model_hash)
        #: observation_log_likelihood of the last call (models with a density), else None
        self.last_log_likelihood: float | np.ndarray | None = None
        self._check_io()
        self.rng = np.random.default_rng(seed)
        self._check_output_at_load(max(1, int(warmup)), output_margin)
        self._check_density_at_load()

    def _check_io(self) -> None:
        meta = self.metadata
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        images = meta.observation.image_features
        wanted = EXPECTED_INPUTS + tuple(image_input_name(f.camera) for f in images) + (RTC_INPUTS if meta.rtc else ())
        self._check_density_io(outputs)
        if tuple(sorted(inputs)) != tuple(sorted(wanted)) or outputs[:1] != ["actions"]:
            kind = f"a real-time chunking model (rtc d_max {meta.rtc_max_delay})" if meta.rtc else "a plain model (no rtc)"
            if images:
                kind += f" with cameras {[f.camera for f in images]}"
            raise ModelFileError(
                f"{self.path}: graph inputs {sorted(inputs)} / outputs {outputs}, but the metadata describes {kind} "
                f"with inputs {list(wanted)} / ['actions']"
            )
        expected = {"observation": [meta.obs_dim], "noise": [meta.horizon, meta.action_dim]}
        if meta.rtc:
            expected["prefix_actions"] = [meta.horizon, meta.action_dim]
        for name, tail in expected.items():
            shape = list(inputs[name].shape[1:])
            if shape != tail:
                raise ModelFileError(f"{self.path}: input '{name}' has shape [B, {shape}] but the metadata says [B, {tail}]")
        for feature in images:
            graph_input = inputs[image_input_name(feature.camera)]
            shape = list(graph_input.shape[1:])
            if graph_input.type != "tensor(uint8)" or shape != list(feature.image_shape):
                raise ModelFileError(
                    f"{self.path}: input '{graph_input.name}' is {graph_input.type} [B, {shape}] but the metadata's "
                    f"{feature.name} says tensor(uint8) [B, {list(feature.image_shape)}]")
        declared = self.session.get_outputs()[0].shape
        want = [None, meta.horizon, meta.action_dim]
        if declared is not None and (len(declared) != 3 or any(
                isinstance(have, int) and need is not None and have != need for have, need in zip(declared, want))):
            raise ModelFileError(f"{self.path}: output 'actions' is declared with shape {list(declared)} but the "
                                 f"metadata says [B, {meta.horizon}, {meta.action_dim}] (H, A)")

    def _check_output_at_load(self, calls: int, output_margin: float = DEFAULT_OUTPUT_MARGIN) -> None:
        """Warm up with ``calls`` calls on a typical observation; the first result must be a finite (H, A) chunk
        inside the training action range (:meth:`_check_output_range`).

        The observation is the middle of the training range when the metadata has one, else zeros.
        """
        meta = self.metadata
        rng = meta.observation_range
        obs = np.zeros(meta.obs_dim, np.float32) if rng is None else ((rng.low + rng.high) / 2).astype(np.float32)
        noise = np.zeros((meta.horizon, meta.action_dim), np.float32)
        feeds = {"observation": obs[None], "noise": noise[None], "guidance_scale": np.array([meta.guidance_scale], np.float32)}
        feeds.update({image_input_name(f.camera): np.full((1, *f.image_shape), 128, np.uint8)  # a mid-grey frame
                      for f in meta.observation.image_features})
        if meta.rtc:
            feeds.update(self._prefix_feeds(1, False, None, None))
        for i in range(calls):
            actions, problem = self._run(feeds)
            if problem:
                raise ModelFileError(f"{self.path}: the load-time check call on a typical observation failed: {problem}")
            if i == 0:
                self._check_output_range(actions, output_margin)

    def _check_output_range(self, actions: np.ndarray, margin: float) -> None:
        """The load-time chunk (1, H, A) on a typical observation must lie within the metadata's training
        action range + ``margin`` range widths (no range: nothing to check); else ModelFileError naming the
        joint, value and range: a model whose outputs sit rad away from its own training data is refused."""
        problem = output_range_problem(actions, self.metadata.action_range, margin)
        if problem:
            raise ModelFileError(f"{self.path}: the load-time check on a typical observation gives an output outside "
                                 f"the training action range: {problem}")

    def _run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray | None, str]:
        """One session call on checked inputs (observation (B, obs_dim), ...) → (actions, "") or (None, why not)."""
        meta = self.metadata
        self.last_log_likelihood = None
        try:
            actions, *score = self.session.run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types when a graph cannot run on an input
            return None, f"ONNX Runtime could not run the graph ({type(exc).__name__}: {one_line(exc)})"
        if score:
            self.last_log_likelihood = score[0]
        problem = output_problem(actions, (feeds["observation"].shape[0], meta.horizon, meta.action_dim))
        return (None, problem) if problem else (actions, "")

    @property
    def rtc(self) -> bool:
        """True for a real-time chunking model (it takes a committed prefix)."""
        return self.metadata.rtc

    def reseed(self, seed: int) -> None:
        """Restart the noise stream from ``seed``: the draws are then those of a policy loaded with ``seed``."""
        self.rng = np.random.default_rng(seed)

    def sample_noise(self, batch: int | None = None) -> np.ndarray:
        """Draw x0 from the owned stream: (H, A) or (batch, H, A) float32."""
        shape = (self.metadata.horizon, self.metadata.action_dim)
        if batch is not None:
            shape = (batch, *shape)
        return self.rng.standard_normal(shape).astype(np.float32)

    def predict(
        self,
        observation: np.ndarray,
        noise: np.ndarray | None = None,
        guidance_scale: float | None = None,
        prefix_actions: np.ndarray | None = None,
        prefix_length: int | np.ndarray | None = None,
        images: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Action chunk(s) in robot units (rad).

        observation: (obs_dim,) or (B, obs_dim) in raw units (order per metadata.observation).
        noise: x0 of matching shape (H, A) / (B, H, A); drawn from the owned stream if None.
        guidance_scale: CFG weight w (default: the metadata's).
        prefix_actions: (H, A) / (B, H, A) committed joint targets (rad, absolute), rows >= d
            ignored; prefix_length: d (int or (B,)) in [0, d_max]. RTC models only; the output's
            first d rows equal the prefix exactly.
        images: image feature name (``image.<camera>``) -> (Hc, Wc, 3) / (B, Hc, Wc, 3) uint8 RGB
            frame(s), one per camera of the model (none for a state-only model).
        Returns (H, A) or (B, H, A) float32, every value finite.
        Raises ObservationError for a bad input, InvalidOutputError (one line) when the graph's
        output has the wrong shape or NaN/inf values (or cannot run on this input).
        """
        meta = self.metadata
        self.last_log_likelihood = None  # no stale score survives a refused call
        obs = np.asarray(observation, dtype=np.float32)
        single = obs.ndim == 1
        if single:
            obs = obs[None, :]
        if obs.ndim != 2 or obs.shape[1] != meta.obs_dim:
            raise ObservationError(f"observation shape {np.shape(observation)}, expected ({meta.obs_dim},) or (B, {meta.obs_dim})")
        if not np.all(np.isfinite(obs)):
            bad = sorted(set(np.argwhere(~np.isfinite(obs))[:, 1].tolist()))
            raise ObservationError(f"observation has NaN/inf at index {bad}")
        batch = obs.shape[0]
        if noise is None:
            noise_arr = self.sample_noise(batch)
        else:
            noise_arr = np.asarray(noise, dtype=np.float32)
            if single and noise_arr.ndim == 2:
                noise_arr = noise_arr[None]
            if noise_arr.shape != (batch, meta.horizon, meta.action_dim):
                raise ObservationError(f"noise shape {np.shape(noise)}, expected ({batch}, {meta.horizon}, {meta.action_dim})")
        w = meta.guidance_scale if guidance_scale is None else float(guidance_scale)
        if not np.isfinite(w):
            raise ObservationError(f"guidance_scale {w} is not finite")
        feeds = {"observation": obs, "noise": noise_arr, "guidance_scale": np.array([w], dtype=np.float32)}
        feeds.update(graph_image_feeds(self.path.name, self.metadata.observation.image_features, batch, single, images))
        if meta.rtc:
            feeds.update(self._prefix_feeds(batch, single, prefix_actions, prefix_length))
        elif prefix_length is not None and np.any(np.asarray(prefix_length) != 0):
            raise ObservationError(f"{self.path.name} is not a real-time chunking model: it takes no prefix")
        actions, problem = self._run(feeds)
        if problem:
            raise InvalidOutputError(f"{self.path.name}: {problem}")
        if single and self.last_log_likelihood is not None:
            self.last_log_likelihood = float(np.asarray(self.last_log_likelihood).reshape(-1)[0])
        return actions[0] if single else actions

    # -- observation density (metadata ``density``, issue 24) ----------------------------------
    @property
    def density_threshold(self) -> float | None:
        """The calibrated log-likelihood threshold (nats), or None for a model without a density."""
        return None if self.metadata.density is None else self.metadata.density.threshold

    def predict_with_score(self, observation: np.ndarray, **kwargs) -> tuple[np.ndarray, float | np.ndarray | None]:
        """(:meth:`predict`'s chunk(s), the observation log-likelihood of the same call: float / (B,), or
        None for a model without a density)."""
        actions = self.predict(observation, **kwargs)
        return actions, self.last_log_likelihood

    def _check_density_io(self, outputs: list[str]) -> None:
        """A model with metadata ``density`` has exactly the outputs [actions, observation_log_likelihood]."""
        want = ["actions", LOG_LIKELIHOOD_OUTPUT] if self.metadata.density is not None else ["actions"]
        if outputs != want:
            kind = "a density (metadata 'density')" if self.metadata.density is not None else "no density"
            raise ModelFileError(f"{self.path}: graph outputs {outputs}, but the metadata describes a model with {kind}: "
                                 f"outputs {want}")

    def _check_density_at_load(self) -> None:
        """The load-time call's score (a typical observation) must be one finite value per observation."""
        if self.metadata.density is None:
            return
        score = self.last_log_likelihood
        values = None if score is None else np.asarray(score)
        if values is None or values.shape != (1,) or not np.all(np.isfinite(values)):
            shown = None if values is None else values.tolist()
            raise ModelFileError(f"{self.path}: output '{LOG_LIKELIHOOD_OUTPUT}' is {shown} on a typical observation "
                                 "(expected one finite value): the density is broken, re-export it")

    def _prefix_feeds(self, batch: int, single: bool, prefix_actions: np.ndarray | None,
                      prefix_length: int | np.ndarray | None) -> dict[str, np.ndarray]:
        """prefix_actions (B, H, A) float32 and prefix_length (B,) int64, checked against the metadata."""
        meta = self.metadata
        lengths = np.zeros(batch, np.int64) if prefix_length is None else np.asarray(prefix_length, dtype=np.int64).reshape(-1)
        if lengths.size == 1 and batch > 1:
            lengths = np.full(batch, int(lengths[0]), np.int64)
        if lengths.shape != (batch,):
            raise ObservationError(f"prefix_length has {lengths.size} values for a batch of {batch}")
        if np.any(lengths < 0) or np.any(lengths > meta.rtc_max_delay):
            raise ObservationError(f"prefix_length {lengths.tolist()} outside [0, d_max={meta.rtc_max_delay}]")
        shape = (batch, meta.horizon, meta.action_dim)
        if prefix_actions is None:
            if np.any(lengths > 0):
                raise ObservationError("prefix_length > 0 but no prefix_actions given")
            prefix = np.zeros(shape, np.float32)
        else:
            prefix = np.asarray(prefix_actions, dtype=np.float32)
            if single and prefix.ndim == 2:
                prefix = prefix[None]
            if prefix.shape != shape:
                raise ObservationError(f"prefix_actions shape {np.shape(prefix_actions)}, expected {shape[1:]} or {shape}")
            rows = np.arange(meta.horizon)[None, :] < lengths[:, None]
            if not np.all(np.isfinite(prefix[rows])):
                raise ObservationError("prefix_actions has NaN/inf in its committed rows")
            prefix = np.where(rows[:, :, None], prefix, 0.0).astype(np.float32)  # rows >= d are ignored
        return {"prefix_actions": prefix, "prefix_length": lengths}
