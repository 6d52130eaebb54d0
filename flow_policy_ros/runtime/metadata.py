"""The policy metadata carried inside every exported ONNX file (``metadata_props['flow_policy']``).

One JSON document says what the graph expects and produces: observation layout, action
joints, chunk shape, sampler steps, control period, joint limits, and where it came from.
Pure Python: the runtime validates it without torch.

Format version 1, extended compatibly: ``observation_range`` (the training range of every
observation dimension, for the out-of-distribution guard of :mod:`flow_policy_ros.runtime.ood`)
is optional. A file without it still loads (its ``observation_range`` is None and the guard is
off); a runtime that predates it ignores it. Likewise ``action_range`` (the training range of
every action joint, rad: ``{low, high, source}``, for the output range guard, see
:func:`output_range_problem`): without it the guard is off. The solver's step count is written as
``solver_steps``; files written before carry it as ``euler_steps`` (whatever the solver), which
still reads.

``density`` (optional, issue 24): the graph also outputs ``observation_log_likelihood`` [B]
(log p of the raw observation under a flow density model, nats) and the entry records the
density model, its solver and steps, and the calibrated threshold with how it was computed
(:class:`DensityInfo`). A file without it has one output and runs with the range guard alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flow_policy_ros.contract import JointLimits, ModelIO, ObservationSpec
from flow_policy_ros.errors import ConfigError, ModelFileError, SafetyError, one_line
from flow_policy_ros.runtime.ood import ObservationRange, ood_excess

#: Default margin of the output range guard (range widths beyond the training action range before
#: a chunk is an invalid output). Measured (docs/safety.md, "Output range"): the shipped models'
#: chunks on 50 eval episodes each stay within 0.0007 range widths of their training action range;
#: 0.25 (the OOD guard's default) leaves a wide berth and still refuses a model 3 rad off (> 1 width).
DEFAULT_OUTPUT_MARGIN = 0.25

METADATA_KEY = "flow_policy"
#: Solvers a graph may have been unrolled with (kept equal to ``policy.flow.SOLVERS``).
SOLVERS = ("euler", "midpoint", "heun", "rk4")
FORMAT_VERSION = 1
#: The key of ``solver_steps`` in files written before it was renamed (still read).
OLD_STEPS_KEY = "euler_steps"
#: The extra output of a model with a density (metadata ``density``).
LOG_LIKELIHOOD_OUTPUT = "observation_log_likelihood"


@dataclass(frozen=True)
class DensityInfo:
    """The observation density inside a graph (metadata ``density``).

    Attributes:
        threshold: calibrated log-likelihood threshold (nats, raw units): a decision whose score is
            below it is out of distribution.
        solver, steps: the fixed-step integration of the log-likelihood unrolled in the graph.
        model: the density network's shape and training (dict: config, data_noise, steps, ...).
        calibration: how ``threshold`` was computed (rule, alpha, n, episodes, data).
    """

    threshold: float
    solver: str
    steps: int
    model: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"output": LOG_LIKELIHOOD_OUTPUT, "threshold": self.threshold, "solver": self.solver,
                "steps": self.steps, "model": self.model, "calibration": self.calibration}

    @classmethod
    def from_json(cls, data: Any, where: str) -> DensityInfo:
        if not isinstance(data, dict):
            raise ModelFileError(f"{where}: metadata 'density' must be an object, got {type(data).__name__}")
        missing = [k for k in ("threshold", "solver", "steps", "calibration") if k not in data]
        if missing:
            raise ModelFileError(f"{where}: metadata 'density' lacks {missing}")
        info = cls(float(data["threshold"]), str(data["solver"]), int(data["steps"]), dict(data.get("model") or {}),
                   dict(data["calibration"]))
        if not math.isfinite(info.threshold):
            raise ModelFileError(f"{where}: metadata density.threshold must be finite, got {data['threshold']!r}")
        if info.solver not in SOLVERS or info.steps < 1:
            raise ModelFileError(f"{where}: metadata density solver {info.solver!r} x {info.steps}: "
                                 f"expected one of {SOLVERS} and steps >= 1")
        return info


@dataclass(frozen=True)
class PolicyMetadata:
    """What an exported policy is.

    Attributes:
        name: model name (file stem at export).
        io: the model I/O contract (observation spec, action joints, H, control period, limits),
            the same type the training config embeds; its fields are also attributes here.
        solver_steps: N, solver steps unrolled in the graph (older files: key ``euler_steps``).
        solver: 'euler', 'midpoint', 'heun' or 'rk4' (files without the key are Euler).
        rtc_max_delay: d_max of a real-time chunking model (its graph has the inputs
            ``prefix_actions`` and ``prefix_length``); 0 = a plain model.
        guidance_scale: default CFG weight w.
        objective: 'flow' or 'regression' (regression ignores the noise input).
        normalization: 'minmax' or 'meanstd' (the statistics themselves are in the graph).
        action_frame: 'relative' or 'absolute' (informational: the graph outputs absolute targets).
        chunk_basis: 'none' or the smooth chunk basis and its size, e.g. 'bspline/6' (informational).
        noise_scale: sampling temperature baked into the graph (x0 = noise_scale * noise; informational).
        checkpoint_sha256: hash of the checkpoint the graph was exported from.
        training_data: summary of the training data (episodes, windows, source).
        code_version: package version + commit at export.
        observation_range: training range of every observation dimension, or None (older export).
        action_range: training range of every action joint (rad; labels = the action joints), or
            None (older export: the output range guard is off).
        density: the observation density (output ``observation_log_likelihood``), or None.
        model_hash: sha256 of the ONNX file (set by the runtime when loading, not stored).
    """

    name: str
    io: ModelIO
    solver_steps: int
    solver: str = "euler"
    rtc_max_delay: int = 0
    guidance_scale: float = 1.0
    objective: str = "flow"
    normalization: str = "minmax"
    action_frame: str = "absolute"
    chunk_basis: str = "none"
    noise_scale: float = 1.0
    checkpoint_sha256: str = ""
    training_data: dict[str, Any] = field(default_factory=dict)
    code_version: str = ""
    observation_range: ObservationRange | None = None
    action_range: ObservationRange | None = None
    density: DensityInfo | None = None
    model_hash: str = ""

    @property
    def observation(self) -> ObservationSpec:
        return self.io.observation

    @property
    def action_joint_names(self) -> tuple[str, ...]:
        return self.io.action_joint_names

    @property
    def horizon(self) -> int:
        return self.io.horizon

    @property
    def control_period_s(self) -> float:
        return self.io.control_period_s

    @property
    def limits(self) -> JointLimits:
        return self.io.limits

    @property
    def steps(self) -> int:
        """N, solver steps in the graph."""
        return self.solver_steps

    @property
    def rtc(self) -> bool:
        """True for a real-time chunking model (inputs prefix_actions and prefix_length)."""
        return self.rtc_max_delay > 0

    @property
    def action_dim(self) -> int:
        return self.io.action_dim

    @property
    def obs_dim(self) -> int:
        return self.io.obs_dim

    def to_json(self) -> str:
        extra: dict[str, Any] = {} if self.observation_range is None else {"observation_range": self.observation_range.to_json()}
        if self.action_range is not None:
            extra["action_range"] = self.action_range.to_json()
        if self.density is not None:
            extra["density"] = self.density.to_json()
        return json.dumps(
            {
                **extra,
                "format_version": FORMAT_VERSION,
                "name": self.name,
                "observation": self.observation.to_json(),
                "obs_dim": self.obs_dim,
                "action_joint_names": list(self.action_joint_names),
                "horizon": self.horizon,
                "action_dim": self.action_dim,
                "solver_steps": self.solver_steps,
                "solver": self.solver,
                "rtc": {"max_delay": self.rtc_max_delay} if self.rtc_max_delay > 0 else None,
                "control_period_s": self.control_period_s,
                "limits": {"lower": list(self.limits.lower), "upper": list(self.limits.upper), "velocity": list(self.limits.velocity)},
                "guidance_scale": self.guidance_scale,
                "objective": self.objective,
                "normalization": self.normalization,
                "action_frame": self.action_frame,
                "chunk_basis": self.chunk_basis,
                "noise_scale": self.noise_scale,
                "checkpoint_sha256": self.checkpoint_sha256,
                "training_data": self.training_data,
                "code_version": self.code_version,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, where: str = "model", model_hash: str = "") -> PolicyMetadata:
        """Parse and check consistency; errors name ``where`` and the offending field."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{where}: metadata '{METADATA_KEY}' is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ModelFileError(f"{where}: metadata '{METADATA_KEY}' must be a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelFileError(f"{where}: metadata format_version {version!r}, this runtime reads {FORMAT_VERSION}")
        if "solver_steps" not in data and OLD_STEPS_KEY in data:  # written before the rename
            data["solver_steps"] = data.pop(OLD_STEPS_KEY)
        required = ("name", "observation", "action_joint_names", "horizon", "action_dim", "obs_dim",
                    "solver_steps", "control_period_s", "limits")
        missing = [key for key in required if key not in data]
        if missing:
            raise ModelFileError(f"{where}: metadata lacks field(s) {missing}")
        try:
            io = ModelIO(
                observation=ObservationSpec(**data["observation"]),
                action_joint_names=tuple(data["action_joint_names"]),
                horizon=int(data["horizon"]),
                control_period_s=float(data["control_period_s"]),
                limits=JointLimits(**data["limits"]),
            )
            meta = cls(
                name=str(data["name"]),
                io=io,
                solver_steps=int(data["solver_steps"]),
                solver=str(data.get("solver", "euler")),
                rtc_max_delay=int((data.get("rtc") or {}).get("max_delay", 0)),
                guidance_scale=float(data.get("guidance_scale", 1.0)),
                objective=str(data.get("objective", "flow")),
                normalization=str(data.get("normalization", "")),
                action_frame=str(data.get("action_frame", "absolute")),
                chunk_basis=str(data.get("chunk_basis", "none")),
                noise_scale=float(data.get("noise_scale", 1.0)),
                checkpoint_sha256=str(data.get("checkpoint_sha256", "")),
                training_data=dict(data.get("training_data", {})),
                code_version=str(data.get("code_version", "")),
                observation_range=(None if data.get("observation_range") is None else
                                   ObservationRange.from_json(data["observation_range"], io.observation, where)),
                action_range=parse_action_range(data.get("action_range"), io.action_joint_names, where),
                density=None if data.get("density") is None else DensityInfo.from_json(data["density"], where),
                model_hash=model_hash,
            )
        except (ConfigError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{where}: metadata is malformed ({exc})") from exc
        checks = [
            (meta.obs_dim == data["obs_dim"], f"obs_dim {data['obs_dim']} but the observation spec gives {meta.obs_dim}"),
            (meta.action_dim == data["action_dim"], f"action_dim {data['action_dim']} but {meta.action_dim} action joints"),
            (meta.solver_steps >= 1, f"solver_steps {meta.solver_steps} must be >= 1"),
            (meta.solver in SOLVERS, f"solver {meta.solver!r} must be one of {SOLVERS}"),
            (0 <= meta.rtc_max_delay < meta.horizon, f"rtc.max_delay {meta.rtc_max_delay} must be in [0, horizon)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ModelFileError(f"{where}: inconsistent metadata: {message}")
        return meta


def parse_action_range(data: Any, joints: tuple[str, ...], where: str = "model") -> ObservationRange | None:
    """The metadata's ``action_range`` ({low, high, source}, one value per action joint, rad) as a
    range labelled by the joints; None when absent; ModelFileError naming ``where`` when malformed."""
    if data is None:
        return None
    if not isinstance(data, dict) or "low" not in data or "high" not in data:
        raise ModelFileError(f"{where}: metadata action_range must be an object with 'low' and 'high'")
    try:
        low, high = np.asarray(data["low"], dtype=np.float64), np.asarray(data["high"], dtype=np.float64)
        if low.shape != (len(joints),) or high.shape != (len(joints),):
            raise ValueError(f"{low.size}/{high.size} values, expected one per action joint ({len(joints)})")
        return ObservationRange(low, high, tuple(joints), str(data.get("source", "")))
    except (TypeError, ValueError, SafetyError) as exc:
        raise ModelFileError(f"{where}: metadata action_range is malformed ({one_line(exc)})") from exc


def output_range_problem(actions: np.ndarray, action_range: ObservationRange | None, margin: float) -> str:
    """Why a chunk (..., A) rad lies beyond ``action_range`` by more than ``margin`` range widths
    (naming the joint, the value and the range), '' when it does not or there is no range."""
    if action_range is None:
        return ""
    values = np.asarray(actions, dtype=np.float64).reshape(-1, action_range.low.size)
    excess = ood_excess(values, action_range)  # (N, A) range widths beyond the range
    worst = np.unravel_index(int(np.argmax(excess)), excess.shape)
    if not excess[worst] > margin:
        return ""
    row, j = int(worst[0]), int(worst[1])
    return (f"joint {action_range.labels[j]} = {values[row, j]:.3f} rad is {excess[worst]:.3g} range widths outside "
            f"the training action range [{action_range.low[j]:.3f}, {action_range.high[j]:.3f}] (output_margin {margin:g})")


def output_guard_status(action_range: ObservationRange | None, margin: float) -> str:
    """'on (margin M range widths)' or 'off: no action range in metadata'."""
    return "off: no action range in metadata" if action_range is None else f"on (margin {margin:g} range widths)"
