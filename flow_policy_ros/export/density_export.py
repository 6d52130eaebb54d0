"""The observation density in the exported graph: output ``observation_log_likelihood`` [B] (issue 24).

:class:`SamplerWithDensity` is what a graph with a density computes: the unchanged sampler
(``actions``) and, from the same raw ``observation`` input, log p(observation) in nats
(:class:`~flow_policy_ros.policy.density.ObservationLogLikelihood`, fixed solver and steps
unrolled). The two outputs share nothing but the input, so the actions are those of the graph
without the density.

The threshold is calibrated on the EXPORTED graph (:func:`calibrate_graph`): ONNX Runtime scores
every window of held-out episodes, the per-episode minima go through
:func:`~flow_policy_ros.policy.density_training.conformal_threshold`, and
:func:`density_metadata` records the rule, alpha, n and the episodes. :func:`density_parity`
compares the graph's score with PyTorch's (relative, against ``PARITY_TOLERANCE``).

Camera models (:class:`SamplerWithCameraDensity`): the density scores the raw observation with the
encoder's embedding of the frame (``policy.camera_density``), taken from the condition input the
sampler uses, so the encoder runs once; calibration feeds every held-out window's frame in force
(:func:`window_images`) and :func:`camera_density_parity` compares against the eager encoder + density.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flow_policy_ros.errors import ModelFileError, UsageError
from flow_policy_ros.policy.camera_density import CAMERA_KIND, CameraLogLikelihood, CameraObservationDensity
from flow_policy_ros.policy.checkpoint import Checkpoint
from flow_policy_ros.policy.density import DEFAULT_SOLVER, DEFAULT_STEPS, ObservationLogLikelihood
from flow_policy_ros.policy.density_training import (
    CONFORMAL_RULE,
    conformal_threshold,
    density_from_checkpoint,
    episode_minima,
)
from flow_policy_ros.policy.flow import check_solver
from flow_policy_ros.reports import portable_path
from flow_policy_ros.runtime.image_inputs import image_input_name
from flow_policy_ros.runtime.metadata import LOG_LIKELIHOOD_OUTPUT, DensityInfo

#: Default false-alarm rate of the calibration (per held-out episode).
DEFAULT_ALPHA = 0.01


@dataclass(frozen=True)
class DensityExport:
    """What ``flow-policy export`` was asked for the density: held-out data, alpha, solver, steps."""

    calibration: Path
    alpha: float = DEFAULT_ALPHA
    solver: str = DEFAULT_SOLVER
    steps: int = DEFAULT_STEPS

    def __post_init__(self) -> None:
        try:
            check_solver(self.solver, self.steps)
        except ValueError as exc:
            raise UsageError(f"--density-solver/--density-steps: {exc}") from exc
        if not 0.0 < self.alpha < 1.0:
            raise UsageError(f"--density-alpha {self.alpha}: must be in (0, 1)")
        if not Path(self.calibration).exists():
            raise UsageError(f"--density-calibration {self.calibration}: no such data")


class SamplerWithCameraDensity(nn.Module):
    """A camera model's graph with its density: forward(observation, noise, guidance_scale, image_<camera>...
    [, prefix...]) -> (actions (B, H, A), log p (B,)). The condition input (normalized observation + the
    encoder's embedding) is computed ONCE and feeds both the sampler and the density (its embedding
    columns), so the actions are the same computation as the graph without the density."""

    def __init__(self, graph: nn.Module, log_likelihood: CameraLogLikelihood) -> None:
        super().__init__()
        self.graph, self.log_likelihood = graph, log_likelihood  # graph: onnx_export.GraphSampler

    def forward(self, observation: torch.Tensor, noise: torch.Tensor, guidance_scale: torch.Tensor,
                *rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sampler = self.graph.sampler
        images, prefix = self.graph.split_inputs(rest)
        condition = sampler.condition_input(observation, images)
        actions = sampler.sample(observation, condition, noise, guidance_scale, *prefix)
        return actions, self.log_likelihood(observation, condition[:, observation.shape[1]:])


class SamplerWithDensity(nn.Module):
    """forward(observation, noise, guidance_scale[, prefix...]) -> (actions (B, H, A), log p (B,))."""

    def __init__(self, sampler: nn.Module, log_likelihood: ObservationLogLikelihood) -> None:
        super().__init__()
        self.sampler, self.log_likelihood = sampler, log_likelihood

    def forward(self, observation: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sampler(observation, *rest), self.log_likelihood(observation)


def log_likelihood_module(ckpt: Checkpoint, request: DensityExport, where: str) -> ObservationLogLikelihood | CameraLogLikelihood:
    """The checkpoint's density as the exported score (eval mode, no grad): a :class:`CameraLogLikelihood`
    (observation, embedding) for a camera density, else an ``ObservationLogLikelihood`` (observation)."""
    density = density_from_checkpoint(ckpt, where)
    flow = density.density if isinstance(density, CameraObservationDensity) else density
    # every stage time of a backward fixed-step solver with N steps lies on the grid 1 - j / (2N)
    flow.net.freeze_time_features([1.0 - j / (2 * request.steps) for j in range(2 * request.steps + 1)])
    kind = CameraLogLikelihood if isinstance(density, CameraObservationDensity) else ObservationLogLikelihood
    return kind(density, request.steps, request.solver).eval().requires_grad_(False)


#: ``image_<camera>`` input name -> (N, Hc, Wc, 3) uint8 frames, an array or a :class:`WindowFrames`.
FrameSource = dict[str, Any]


def graph_scores(session: Any, observations: np.ndarray, batch: int = 512, images: FrameSource | None = None) -> np.ndarray:
    """``observation_log_likelihood`` (N,) of ``observations`` (N, obs_dim) by an ONNX Runtime
    session of a graph with a density; the other inputs are neutral (zero noise, w = 1, no prefix).
    Camera graphs: ``images`` maps each ``image_<camera>`` input name to (N, Hc, Wc, 3) uint8 frames
    (an array, or any object indexable by a slice, e.g. :class:`WindowFrames`)."""
    inputs = {i.name: i for i in session.get_inputs()}
    horizon, action_dim = inputs["noise"].shape[1], inputs["noise"].shape[2]
    out = []
    for start in range(0, len(observations), batch):
        obs = np.ascontiguousarray(observations[start:start + batch], dtype=np.float32)
        b = len(obs)
        feeds = {"observation": obs, "noise": np.zeros((b, horizon, action_dim), np.float32),
                 "guidance_scale": np.ones(1, np.float32)}
        for name, frames in (images or {}).items():
            feeds[name] = np.ascontiguousarray(frames[start:start + batch], dtype=np.uint8)
        if "prefix_actions" in inputs:
            feeds.update(prefix_actions=np.zeros((b, horizon, action_dim), np.float32),
                         prefix_length=np.zeros(b, np.int64))
        (scores,) = session.run([LOG_LIKELIHOOD_OUTPUT], feeds)
        out.append(scores)
    return np.concatenate(out).astype(np.float64)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class WindowFrames:
    """Frames of windows by slice without copying them all: ``frames`` (F, H, W, 3) uint8 indexed by
    ``frame_index`` (N,) (a ``dataset.Windows`` camera); ``self[a:b]`` is (b - a, H, W, 3)."""

    def __init__(self, frames: np.ndarray, frame_index: np.ndarray) -> None:
        self.frames, self.frame_index = frames, np.asarray(frame_index, np.int64)

    def __len__(self) -> int:
        return len(self.frame_index)

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        return self.frames[self.frame_index[rows]]


def window_images(windows: Any) -> FrameSource:
    """``image_<camera>`` -> :class:`WindowFrames` of a ``dataset.Windows`` (empty for a state-only model)."""
    return {image_input_name(c): WindowFrames(windows.frames[c], windows.frame_index[c]) for c in windows.frames}


def load_calibration_windows(ckpt: Checkpoint, request: DensityExport) -> Any:
    """The held-out windows of ``request.calibration`` (``dataset.Windows``, with frames for a camera model)."""
    from flow_policy_ros.policy.dataset import load_training_data

    return load_training_data(Path(request.calibration), ckpt.config.policy, ckpt.config.data, progress=False)


def calibrate_graph(onnx_path: Path, ckpt: Checkpoint, request: DensityExport, windows: Any = None) -> dict[str, Any]:
    """Score the held-out episodes of ``request.calibration`` (or the already loaded ``windows`` of it) with
    the graph at ``onnx_path``; the calibration record (threshold, rule, alpha, n, k, episodes, windows,
    score quantiles)."""
    windows = load_calibration_windows(ckpt, request) if windows is None else windows
    scores = graph_scores(_session(onnx_path), windows.observations, images=window_images(windows))
    if not np.all(np.isfinite(scores)):
        raise ModelFileError(f"density: {int(np.sum(~np.isfinite(scores)))} NaN/inf score(s) on the calibration windows")
    minima = episode_minima(scores, windows.episode_index)
    threshold, k = conformal_threshold(minima, request.alpha)
    flagged = float(np.mean(scores < threshold))
    return {
        "threshold": threshold,
        "rule": CONFORMAL_RULE,
        "alpha": request.alpha,
        "n": int(len(minima)),
        "k": k,
        "episodes": int(len(minima)),
        "windows": int(len(scores)),
        "data": portable_path(request.calibration),
        "window_scores": {"p1": float(np.percentile(scores, 1)), "p50": float(np.median(scores)),
                          "min": float(scores.min())},
        "window_fraction_below": flagged,
    }


def density_metadata(ckpt: Checkpoint, request: DensityExport, calibration: dict[str, Any]) -> DensityInfo:
    """The ``density`` entry of the metadata."""
    entry = ckpt.density["model"]
    if entry.get("kind") == CAMERA_KIND:
        model = {"kind": ("flow-matching velocity MLP over [raw observation (policy normalization), the policy encoder's "
                          "embedding whitened onto its principal directions], exact divergence"),
                 "input": "observation + the conditional branch's camera embedding (computed once, shared with the sampler)",
                 "cameras": list(entry["cameras"]), "embedding_directions": len(entry["embedding_components"]),
                 "config": dict(entry["density"]["config"]), "training": dict(ckpt.density.get("training", {}))}
    else:
        model = {"kind": "flow-matching velocity MLP over the raw observation (policy normalization), exact divergence",
                 "config": dict(entry["config"]), "training": dict(ckpt.density.get("training", {}))}
    record = {k: v for k, v in calibration.items() if k != "threshold"}
    return DensityInfo(threshold=float(calibration["threshold"]), solver=request.solver, steps=request.steps,
                       model=model, calibration=record)


def density_parity(module: ObservationLogLikelihood, onnx_path: Path, seed: int = 0) -> float:
    """Worst relative |ONNX - PyTorch| / max(1, |PyTorch|) of the score over batch 1 and 8 of
    random observations around the training range (up to 20% beyond it)."""
    session = _session(onnx_path)
    rng = np.random.default_rng(seed)
    shift, scale = module.density.obs_shift.numpy(), module.density.obs_scale.numpy()
    worst = 0.0
    for batch in (1, 8):
        obs = (shift + scale * rng.uniform(-1.2, 1.2, size=(batch, len(shift)))).astype(np.float32)
        onnx_scores = graph_scores(session, obs)
        with torch.no_grad():
            torch_scores = module(torch.from_numpy(obs)).double().numpy()
        worst = max(worst, _relative(onnx_scores, torch_scores))
    return worst


def camera_density_parity(module: CameraLogLikelihood, sampler: nn.Module, onnx_path: Path, windows: Any,
                          seed: int = 0) -> float:
    """As :func:`density_parity` for a camera graph, against the eager ``sampler``'s condition input
    (``onnx_export.Sampler``: its encoder's embedding) and ``module``: batch 1 and 8 of held-out
    windows (observation and frame, evenly spaced over ``windows``), and batch 8 of held-out
    observations with uniform random frames (scores far below the threshold)."""
    session = _session(onnx_path)
    rng = np.random.default_rng(seed)
    frames = window_images(windows)
    worst = 0.0
    for batch, random_frames in ((1, False), (8, False), (8, True)):
        rows = np.linspace(0, len(windows) - 1, batch).round().astype(np.int64)
        obs = np.ascontiguousarray(windows.observations[rows], np.float32)
        images = {name: (rng.integers(0, 256, size=source[rows].shape, dtype=np.uint8) if random_frames else source[rows])
                  for name, source in frames.items()}
        onnx_scores = graph_scores(session, obs, images=images)
        torch_images = {c: torch.from_numpy(images[image_input_name(c)]) for c in sampler.net.cameras}
        with torch.no_grad():
            observation = torch.from_numpy(obs)
            embedding = sampler.condition_input(observation, torch_images)[:, obs.shape[1]:]
            torch_scores = module(observation, embedding).double().numpy()
        worst = max(worst, _relative(onnx_scores, torch_scores))
    return worst


def _relative(onnx_scores: np.ndarray, torch_scores: np.ndarray) -> float:
    return float(np.max(np.abs(onnx_scores - torch_scores) / np.maximum(1.0, np.abs(torch_scores))))
