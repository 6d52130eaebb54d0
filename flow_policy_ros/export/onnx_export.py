"""``flow-policy export``: a checkpoint's whole sampler as ONE self-contained ONNX graph.

The graph is normalize -> N unrolled solver steps (Euler, midpoint, Heun or RK4; both CFG branches
batched) -> unnormalize, traced from the very ``flow.sample_chunks`` used in PyTorch, with the
EMA weights:

    observation [B, obs_dim] (raw units) --+
    noise       [B, H, A]   (x0)          --+--> actions [B, H, A] (rad)
    guidance_scale [1]      (w)           --+
    prefix_actions [B, H, A] (rad)        --+    (real-time chunking models only: the committed
    prefix_length  [B] int64 (d)          --+     prefix; the output's first d rows equal it exactly)
    image_<camera> [B, Hc, Wc, 3] uint8   --+    (camera models: one input per image feature, RGB)

Camera models: each camera's encoder (``policy.image_encoder``, uint8 -> float inside) runs ONCE,
before the unrolled solver steps; its embedding is part of the condition input that both CFG
branches share (the unconditional branch replaces the guided columns by the null vector), so the
graph's Conv count is the encoder's, whatever N (test_export checks N = 2 against N = 10).

The export then proves itself: ``onnx.checker`` full check, no Loop/If/Scan nodes, the
metadata parses, and a parity report against the PyTorch sampler (ONNX Runtime vs eager, w in
{0, 1, 2}, batch 1 and 8) whose worst error must stay below ``PARITY_TOLERANCE``. The file is
written atomically: on any failure nothing is left at the output path.

With a density (``density=DensityExport(...)``, :mod:`flow_policy_ros.export.density_export`) the
graph has a second output ``observation_log_likelihood`` [B] from the same observation input; its
threshold is calibrated on the exported graph itself and its parity is checked separately.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flow_policy_ros.errors import ModelFileError, UsageError
from flow_policy_ros.export.density_export import (
    DensityExport,
    SamplerWithCameraDensity,
    SamplerWithDensity,
    calibrate_graph,
    camera_density_parity,
    density_metadata,
    density_parity,
    load_calibration_windows,
    log_likelihood_module,
)
from flow_policy_ros.policy.camera_density import CameraLogLikelihood
from flow_policy_ros.policy.checkpoint import Checkpoint, file_sha256, load_checkpoint
from flow_policy_ros.policy.flow import check_solver, prefix_mask, sample_chunks, step_time_features
from flow_policy_ros.policy.model import VelocityNet
from flow_policy_ros.policy.normalization import action_reference
from flow_policy_ros.reports import portable_path
from flow_policy_ros.runtime.image_inputs import image_input_name  # noqa: F401 - re-exported
from flow_policy_ros.runtime.metadata import LOG_LIKELIHOOD_OUTPUT, METADATA_KEY, DensityInfo, PolicyMetadata
from flow_policy_ros.runtime.ood import ObservationRange, observation_labels

DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-4
FORBIDDEN_OPS = ("Loop", "If", "Scan")


class Sampler(nn.Module):
    """The complete sampler in raw robot units: what the ONNX graph computes.

    forward(observation (B, obs_dim), noise (B, H, A), guidance_scale (1,)
            [, prefix_actions (B, H, A), prefix_length (B,) int64], images={camera: (B, Hc, Wc, 3) uint8})
            -> actions (B, H, A)
    """

    def __init__(self, net: VelocityNet, ckpt: Checkpoint, steps: int, solver: str = "euler",
                 noise_scale: float | None = None) -> None:
        super().__init__()
        self.net = net
        self.noise_scale = ckpt.config.policy.noise_scale if noise_scale is None else float(noise_scale)
        regression = ckpt.config.train.objective == "regression"
        self.steps = 1 if regression else steps
        self.solver = "euler" if regression else solver
        check_solver(self.solver, self.steps)
        self.rtc = net.rtc
        self.rtc_max_delay = ckpt.config.policy.rtc_max_delay
        self.regression = ckpt.config.train.objective == "regression"
        self.reference_indices = ckpt.config.policy.action_reference_indices()
        for name, value in ckpt.stats.torch_buffers().items():
            self.register_buffer(name, value)
        self.register_buffer("time_features", None)

    def freeze_time_features(self) -> Sampler:
        """Precompute the per-step time features (weights must be final): the graph stores
        them as constants instead of running the time MLP at every step."""
        self.time_features = step_time_features(self.net, self.steps, self.solver)
        return self

    def forward(self, observation: torch.Tensor, noise: torch.Tensor, guidance_scale: torch.Tensor,
                prefix_actions: torch.Tensor | None = None, prefix_length: torch.Tensor | None = None,
                images: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.sample(observation, self.condition_input(observation, images), noise, guidance_scale,
                           prefix_actions, prefix_length)

    def condition_input(self, observation: torch.Tensor, images: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The condition input (B, condition_dim), once per chunk: the normalized observation (+ each
        camera's embedding, ``VelocityNet.condition_input``). A camera density reads its embedding
        columns, so the graph runs the encoder once for both outputs."""
        return self.net.condition_input((observation - self.obs_shift) / self.obs_scale, images)

    def sample(self, observation: torch.Tensor, obs_n: torch.Tensor, noise: torch.Tensor, guidance_scale: torch.Tensor,
               prefix_actions: torch.Tensor | None = None, prefix_length: torch.Tensor | None = None) -> torch.Tensor:
        """Actions (B, H, A) from the raw observation (B, obs_dim), its :meth:`condition_input` ``obs_n``
        and the other inputs of :meth:`forward`."""
        x0 = noise * 0.0 if self.regression else (noise if self.noise_scale == 1.0 else noise * self.noise_scale)
        reference = action_reference(observation, self.reference_indices)
        prefix_n = mask = None
        if prefix_length is not None:
            if not self.rtc:
                raise ValueError("this policy was not trained for real-time chunking (rtc_max_delay = 0)")
            mask = prefix_mask(prefix_length, noise.shape[1])
            prefix_n = (prefix_actions - reference - self.act_shift) / self.act_scale
        chunk_n = sample_chunks(self.net, obs_n, x0, guidance_scale, self.steps, self.time_features, self.solver,
                                prefix_n, mask)
        actions = chunk_n * self.act_scale + self.act_shift + reference
        if mask is not None:  # the committed rows, exactly as given (no float round trip)
            actions = torch.where(mask[:, :, None] > 0, prefix_actions, actions)
        return actions


class GraphSampler(nn.Module):
    """The :class:`Sampler` with positional graph inputs, in the exported order: observation, noise,
    guidance_scale, then ``image_<camera>`` per camera, then prefix_actions, prefix_length (rtc)."""

    def __init__(self, sampler: Sampler) -> None:
        super().__init__()
        self.sampler = sampler
        self.cameras = tuple(sampler.net.cameras)

    def forward(self, observation: torch.Tensor, noise: torch.Tensor, guidance_scale: torch.Tensor,
                *rest: torch.Tensor) -> torch.Tensor:
        images, prefix = self.split_inputs(rest)
        return self.sampler(observation, noise, guidance_scale, *prefix, images=images)

    def split_inputs(self, rest: tuple[torch.Tensor, ...]) -> tuple[dict[str, torch.Tensor] | None, tuple[torch.Tensor, ...]]:
        """The inputs after guidance_scale -> ({camera: frames} or None, (prefix_actions, prefix_length) or ())."""
        n = len(self.cameras)
        return (dict(zip(self.cameras, rest[:n])) if n else None), tuple(rest[n:])




def sampler_from_checkpoint(ckpt: Checkpoint, steps: int | None = None, use_ema: bool = True,
                            solver: str = "euler", noise_scale: float | None = None) -> Sampler:
    """Eager PyTorch sampler with the checkpoint's (EMA) weights, in eval mode."""
    net = VelocityNet(ckpt.config.policy)
    net.load_state_dict(ckpt.ema_state if use_ema else ckpt.model_state)
    sampler = Sampler(net, ckpt, steps or ckpt.config.policy.solver_steps, solver, noise_scale)
    return sampler.eval().requires_grad_(False)


def build_metadata(ckpt: Checkpoint, name: str, steps: int, checkpoint_path: Path, solver: str = "euler",
                   noise_scale: float = 1.0) -> PolicyMetadata:
    """The metadata of the exported graph: I/O contract, sampler, provenance and training range."""
    policy = ckpt.config.policy
    flow = ckpt.config.train.objective == "flow"
    return PolicyMetadata(
        name=name,
        io=policy.io,
        solver_steps=steps if flow else 1,
        solver=solver if flow else "euler",
        rtc_max_delay=policy.rtc_max_delay,
        guidance_scale=policy.guidance_scale,
        objective=ckpt.config.train.objective,
        normalization=policy.normalization,
        action_frame=policy.action_frame,
        chunk_basis="none" if policy.chunk_basis == "none" else f"{policy.chunk_basis}/{policy.basis_size}",
        noise_scale=noise_scale,
        checkpoint_sha256=file_sha256(checkpoint_path),
        training_data={**summarize_training_data(ckpt.data_summary), "train_steps": ckpt.step},
        code_version=ckpt.code_version,
        observation_range=training_range(ckpt),
        action_range=training_action_range(ckpt),
    )


def training_range(ckpt: Checkpoint) -> ObservationRange | None:
    """Min/max of every observation dimension over the training windows, or None when unknown.

    From the data summary (``observation_range``, written by ``policy.dataset``) when the
    checkpoint has it; else from minmax normalization statistics, whose shift ± scale are exactly
    the training min/max (a dimension narrower than 2·MIN_SCALE comes out that wide, i.e. a
    slightly wider range); meanstd statistics without a summary range give None.
    """
    spec = ckpt.config.policy.observation
    labels = observation_labels(spec)
    recorded = ckpt.data_summary.get("observation_range")
    if isinstance(recorded, dict) and "low" in recorded and "high" in recorded:
        return ObservationRange(recorded["low"], recorded["high"], labels, "training windows (min/max)")
    if ckpt.stats.mode == "minmax":
        return ObservationRange(ckpt.stats.obs_shift - ckpt.stats.obs_scale, ckpt.stats.obs_shift + ckpt.stats.obs_scale,
                                labels, "training windows (min/max, from the minmax normalization statistics)")
    return None


def training_action_range(ckpt: Checkpoint) -> ObservationRange | None:
    """Min/max of every action joint's target (rad, absolute) over the training windows, or None.

    For the output range guard (``runtime.metadata.output_range_problem``). From the data summary
    (``action_range`` {low, high}, absolute targets) when the checkpoint has it; else from minmax
    normalization statistics, whose action shift ± scale are exactly the min/max of the network's
    targets over the training split: absolute targets in the 'absolute' frame; in the 'relative'
    frame targets minus the measured positions, so the range is the training range of the action
    joints' measured positions (:func:`training_range`) plus that offset range (a sound superset of
    the targets). Meanstd statistics without a summary range give None (guard off).
    """
    policy = ckpt.config.policy
    joints = tuple(policy.action_joint_names)
    recorded = ckpt.data_summary.get("action_range")
    if isinstance(recorded, dict) and "low" in recorded and "high" in recorded:
        return ObservationRange(recorded["low"], recorded["high"], joints, "training targets (min/max)")
    if ckpt.stats.mode != "minmax":
        return None
    low = np.asarray(ckpt.stats.act_shift - ckpt.stats.act_scale, dtype=np.float64)
    high = np.asarray(ckpt.stats.act_shift + ckpt.stats.act_scale, dtype=np.float64)
    indices = policy.action_reference_indices()
    if not indices:
        return ObservationRange(low, high, joints, "training targets (min/max, from the minmax normalization statistics)")
    measured = training_range(ckpt)
    if measured is None:
        return None
    return ObservationRange(measured.low[indices] + low, measured.high[indices] + high, joints,
                            "measured positions' training range + the relative targets' min/max (normalization statistics)")


def summarize_training_data(summary: dict) -> dict:
    """The scalar facts of a training-data summary (episodes, windows, source, ...); per-episode
    lists are reduced to their length so the metadata stays small.

    No absolute path of the training machine is kept (``reports.portable_path``:
    '/work/data/reach' -> 'data/reach'); train's ``data_sha256`` identifies the data by content.
    """
    out = {}
    for key, value in summary.items():
        if isinstance(value, str):
            out[key] = portable_path(value) if os.path.isabs(value) else value  # never a path of the machine that trained it
        elif isinstance(value, (int, float, bool)) or value is None:
            out[key] = value
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, bool) for v in value):
            out[f"{key}_true"] = sum(value)  # e.g. per-episode success flags -> successes
        elif isinstance(value, (list, tuple)):
            out[f"{key}_count"] = len(value)
    return out


@dataclass
class ParityRow:
    guidance_scale: float
    batch: int
    max_abs_diff: float
    prefix_length: int | None = None


def parity_report(sampler: Sampler, onnx_path: Path, obs_dim: int, seed: int = 0) -> list[ParityRow]:
    """Max |ONNX Runtime - PyTorch| over w in {0, 1, 2} and batch in {1, 8} on random inputs;
    for a real-time chunking model also over prefix lengths d in {0, 1, d_max} (per-row mix)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    shift, scale = sampler.obs_shift.numpy(), sampler.obs_scale.numpy()
    horizon, action_dim = sampler.net.horizon, sampler.net.action_dim
    d_max = sampler.rtc_max_delay
    rows = []
    for batch in (1, 8):
        observation = (shift + scale * rng.uniform(-1.2, 1.2, size=(batch, obs_dim))).astype(np.float32)
        noise = rng.standard_normal((batch, horizon, action_dim)).astype(np.float32)
        prefix = (rng.uniform(-1.0, 1.0, size=(batch, horizon, action_dim))).astype(np.float32)
        images = {c: rng.integers(0, 256, size=(batch, *shape), dtype=np.uint8) for c, shape in _camera_shapes(sampler).items()}
        for d in ((0, 1, d_max) if sampler.rtc else (None,)):
            for w in (0.0, 1.0, 2.0):
                guidance = np.array([w], dtype=np.float32)
                feeds = {"observation": observation, "noise": noise, "guidance_scale": guidance}
                feeds.update({image_input_name(c): frames for c, frames in images.items()})
                args = [torch.from_numpy(observation), torch.from_numpy(noise), torch.from_numpy(guidance)]
                if d is not None:
                    lengths = np.full(batch, d, dtype=np.int64)
                    lengths[::2] = min(d, 1)  # a batch mixes prefix lengths
                    feeds.update(prefix_actions=prefix, prefix_length=lengths)
                    args += [torch.from_numpy(prefix), torch.from_numpy(lengths)]
                (onnx_out,) = session.run(["actions"], feeds)
                with torch.no_grad():
                    torch_images = {c: torch.from_numpy(f) for c, f in images.items()} or None
                    torch_out = sampler(*args, images=torch_images).numpy()
                rows.append(ParityRow(w, batch, float(np.max(np.abs(onnx_out - torch_out))), d))
    return rows


def _camera_shapes(sampler: Sampler) -> dict[str, tuple[int, int, int]]:
    """camera -> (Hc, Wc, 3) of the sampler's image inputs (empty for a state-only model)."""
    return {name: (enc.height, enc.width, 3) for name, enc in sampler.net.image_encoders.items()}
def export_density(graph_path: Path, ckpt: Checkpoint, request: DensityExport, score: nn.Module) -> DensityInfo:
    """Parity of the graph's ``observation_log_likelihood`` (relative, <= PARITY_TOLERANCE) and its
    calibration on the held-out episodes: the metadata's ``density`` entry. Camera models: parity on
    held-out windows' frames (and random frames) against the eager encoder + density."""
    windows = None
    if isinstance(score, CameraLogLikelihood):
        windows = load_calibration_windows(ckpt, request)
        eager = sampler_from_checkpoint(ckpt, 1)
        relative = camera_density_parity(score, eager, graph_path, windows)
    else:
        relative = density_parity(score, graph_path)
    if relative > PARITY_TOLERANCE:
        raise ModelFileError(f"density parity check failed: relative |onnx - torch| = {relative:.3g} > {PARITY_TOLERANCE:g}")
    calibration = calibrate_graph(graph_path, ckpt, request, windows)
    calibration["parity_relative"] = relative
    return density_metadata(ckpt, request, calibration)


def export_checkpoint(
    checkpoint_path: str | Path,
    out_path: str | Path,
    steps: int | None = None,
    opset: int = DEFAULT_OPSET,
    name: str | None = None,
    solver: str = "euler",
    noise_scale: float | None = None,
    density: DensityExport | None = None,
) -> tuple[PolicyMetadata, list[ParityRow]]:
    """Export, verify and atomically write the ONNX policy; returns its metadata and parity rows.

    ``density``: also output the checkpoint's observation log-likelihood, calibrated on held-out
    episodes (the checkpoint must have a density)."""
    import onnx

    checkpoint_path, out_path = Path(checkpoint_path), Path(out_path)
    if not out_path.parent.is_dir():
        raise UsageError(f"--out {out_path}: directory {out_path.parent} does not exist")
    if out_path.suffix != ".onnx":
        raise UsageError(f"--out {out_path}: expected a .onnx file name")
    if opset < 17:
        raise UsageError(f"--opset {opset}: the contract needs opset >= 17")
    ckpt = load_checkpoint(checkpoint_path)
    steps = steps or ckpt.config.policy.solver_steps
    if steps < 1:
        raise UsageError(f"--steps {steps}: must be >= 1")
    try:
        check_solver(solver, steps)
    except ValueError as exc:
        raise UsageError(f"--solver: {exc}") from exc
    noise_scale = ckpt.config.policy.noise_scale if noise_scale is None else float(noise_scale)
    if not 0.0 <= noise_scale <= 1.0:
        raise UsageError(f"--noise-scale {noise_scale}: must be in [0, 1]")
    sampler = sampler_from_checkpoint(ckpt, steps, solver=solver, noise_scale=noise_scale).freeze_time_features()
    metadata = build_metadata(ckpt, name or out_path.stem, steps, checkpoint_path, solver, noise_scale)
    policy = ckpt.config.policy
    score = None if density is None else log_likelihood_module(ckpt, density, str(checkpoint_path))
    if score is None:
        graph = GraphSampler(sampler)
    elif isinstance(score, CameraLogLikelihood):  # the density reads the embedding the sampler computes
        graph = SamplerWithCameraDensity(GraphSampler(sampler), score)
    else:
        graph = SamplerWithDensity(GraphSampler(sampler), score)

    example: tuple[torch.Tensor, ...] = (
        torch.zeros(1, policy.obs_dim),
        torch.zeros(1, policy.horizon, policy.action_dim),
        torch.ones(1),
    )
    input_names = ["observation", "noise", "guidance_scale"]
    dynamic_axes = {"observation": {0: "batch"}, "noise": {0: "batch"}, "actions": {0: "batch"}}
    for camera, shape in _camera_shapes(sampler).items():  # uint8 RGB frames, one input per camera
        example += (torch.zeros(1, *shape, dtype=torch.uint8),)
        input_names.append(image_input_name(camera))
        dynamic_axes[image_input_name(camera)] = {0: "batch"}
    if score is not None:
        dynamic_axes[LOG_LIKELIHOOD_OUTPUT] = {0: "batch"}
    if sampler.rtc:
        example += (torch.zeros(1, policy.horizon, policy.action_dim), torch.ones(1, dtype=torch.int64))
        input_names += ["prefix_actions", "prefix_length"]
        dynamic_axes.update(prefix_actions={0: "batch"}, prefix_length={0: "batch"})
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                example,
                str(tmp),
                input_names=input_names,
                output_names=["actions"] + ([] if score is None else [LOG_LIKELIHOOD_OUTPUT]),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        model = onnx.load(str(tmp))
        forbidden = sorted({node.op_type for node in model.graph.node if node.op_type in FORBIDDEN_OPS})
        if forbidden:
            raise ModelFileError(f"exported graph contains control flow {forbidden}; the sampler must be unrolled")
        if density is not None:
            metadata = replace(metadata, density=export_density(tmp, ckpt, density, score))
        del model.metadata_props[:]
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, metadata.to_json()
        model.producer_name = "flow_policy_ros"
        model.doc_string = (f"flow-matching policy {metadata.name}: {policy.horizon}x{policy.action_dim} chunk, "
                            f"{metadata.solver_steps} {metadata.solver} steps, CFG"
                            + (f", cameras {list(sampler.net.cameras)} (encoder once per chunk)" if sampler.net.cameras else "")
                            + (f", real-time chunking (d_max {policy.rtc_max_delay})" if sampler.rtc else ""))
        onnx.save_model(model, str(tmp), save_as_external_data=False)
        onnx.checker.check_model(str(tmp), full_check=True)
        PolicyMetadata.from_json(metadata.to_json(), where=str(out_path))
        # the reference is the plain eager sampler (time MLP run at every step), not the frozen copy
        rows = parity_report(sampler_from_checkpoint(ckpt, steps, solver=solver, noise_scale=noise_scale), tmp, policy.obs_dim)
        worst = max(row.max_abs_diff for row in rows)
        if worst > PARITY_TOLERANCE:
            raise ModelFileError(f"parity check failed: max |onnx - torch| = {worst:.3g} > {PARITY_TOLERANCE:g}")
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return metadata, rows
