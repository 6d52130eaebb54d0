"""Observation density of a CAMERA model: the joint readings with the policy's own image embedding.

What it models: per decision the feature vector

    f = [x (B, D) raw observation (rad),  u (B, r) = W (e - m)]          (B, D + r)

where e (B, E) is the embedding the policy's frozen encoder computes from the frames
(``VelocityNet.condition_input``'s camera columns: E = 64 per camera, the CONDITIONAL input, before
classifier-free guidance replaces it by the null vector in the unconditional branch, which never
sees the image) and W (r, E), m (E,) whiten it: the rows of W are the principal directions of the
training windows' embeddings divided by their standard deviations, keeping the r directions whose
variance is at least ``rel_tol`` of the largest. :class:`~flow_policy_ros.policy.density.ObservationDensity`
then models f exactly as it models a state observation (x normalized by the policy's statistics,
u already standardized), with its exact divergence.

Why project and not model the 64 embedding values: the encoder's last layer is a Linear from 2K
spatial-softmax coordinates (K = 16 keypoints: 32 numbers) to E = 64, so EVERY embedding, in or out
of distribution, lies in one 32-dimensional affine subspace: a density over 64 values would be a
delta across the 32 others (infinite log-likelihood, stiff flow) and they carry no information.
The principal directions find the subspace (and drop directions with no variance at all in
training) without reaching into the encoder: the density only reads the policy's condition input.
A direction narrower than float32 can resolve is divided by a floor instead of its std
(:data:`DEFAULT_STD_FLOOR`), so rounding does not become score noise.

Why one encoder: the graph computes the embedding once (``Sampler.condition_input``) and feeds it
both to the sampler and to this density, so the score costs no second encoder pass and scores
exactly the embedding the chunk was computed from.

Log-likelihood units: nats per unit of raw state (rad) x per unit of whitened embedding; only
comparisons with the calibrated threshold (same model) mean anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from flow_policy_ros.policy.checkpoint import CAMERA_KIND
from flow_policy_ros.policy.density import (
    DEFAULT_SOLVER,
    DEFAULT_STEPS,
    DensityConfig,
    ObservationDensity,
    quadrature_weights,
    train_density,
)
from flow_policy_ros.policy.flow import check_solver
from flow_policy_ros.policy.model import VelocityNet

#: Principal directions with a variance below this fraction of the largest are dropped (they are
#: float rounding: measured on the shipped model, 32 directions down to 6.7e-7, then 1.4e-15).
DEFAULT_REL_TOL = 1e-8
#: A direction is divided by max(its std, this fraction of the embedding's RMS magnitude). float32
#: resolves ~6e-8 of that magnitude; dividing by a much narrower std turns rounding into score noise
#: (an untrained test encoder whose embedding varied by 7e-5 x RMS scored 1.8e-4 relative apart in
#: ONNX Runtime and PyTorch). The shipped model's narrowest direction is 4.5e-3 x RMS: none is floored.
DEFAULT_STD_FLOOR = 1e-3
#: Frames per encoder call when embedding a data set.
EMBED_BATCH = 256


@dataclass(frozen=True)
class EmbeddingWhitening:
    """u = (e - mean) @ components.T: mean (E,), components (r, E) (principal direction / its std)."""

    mean: np.ndarray
    components: np.ndarray

    @classmethod
    def fit(cls, embeddings: np.ndarray, rel_tol: float = DEFAULT_REL_TOL,
            std_floor: float = DEFAULT_STD_FLOOR) -> EmbeddingWhitening:
        """From embeddings (N, E): keep the principal directions with variance >= rel_tol x the largest,
        each divided by max(its std, ``std_floor`` x the RMS of the embedding values)."""
        e = np.asarray(embeddings, dtype=np.float64)
        if e.ndim != 2 or len(e) < 2 or not np.all(np.isfinite(e)):
            raise ValueError(f"embedding whitening: expected finite embeddings (N >= 2, E), got shape {e.shape}")
        mean = e.mean(axis=0)
        variances, vectors = np.linalg.eigh(np.cov(e - mean, rowvar=False))
        order = np.argsort(variances)[::-1]
        variances, vectors = variances[order], vectors[:, order]
        keep = variances >= rel_tol * max(float(variances[0]), 1e-300)
        if not keep.any():
            raise ValueError("embedding whitening: the embeddings do not vary")
        floor = std_floor * float(np.sqrt(np.mean(e * e)))
        components = (vectors[:, keep] / np.maximum(np.sqrt(variances[keep]), floor)).T
        return cls(mean, components)

    @property
    def dim(self) -> int:
        """r, the whitened dimensions."""
        return int(self.components.shape[0])

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, E) -> (N, r), float64."""
        return (np.asarray(embeddings, np.float64) - self.mean) @ self.components.T


class CameraObservationDensity(nn.Module):
    """log p(f) of f = [raw observation (B, D), whitened embedding (B, r)] (see the module docstring)."""

    def __init__(self, density: ObservationDensity, obs_dim: int, whitening: EmbeddingWhitening,
                 cameras: tuple[str, ...]) -> None:
        super().__init__()
        if density.net.cfg.obs_dim != obs_dim + whitening.dim:
            raise ValueError(f"camera density: the flow models {density.net.cfg.obs_dim} values, expected "
                             f"{obs_dim} observation + {whitening.dim} embedding directions")
        self.density, self.obs_dim, self.whitening, self.cameras = density, int(obs_dim), whitening, tuple(cameras)
        self.register_buffer("embedding_mean", torch.tensor(whitening.mean, dtype=torch.float32))
        self.register_buffer("embedding_components", torch.tensor(whitening.components, dtype=torch.float32))

    def features(self, observation: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """(B, D + r): the raw observation (B, D) beside the whitened embedding of ``embedding`` (B, E)."""
        whitened = torch.matmul(embedding - self.embedding_mean, self.embedding_components.t())
        return torch.cat([observation, whitened], dim=1)

    def log_prob(self, observation: torch.Tensor, embedding: torch.Tensor, steps: int = DEFAULT_STEPS,
                 solver: str = DEFAULT_SOLVER) -> torch.Tensor:
        """log p (B,) in nats of raw observations (B, D) with the embeddings (B, E) of their frames."""
        return self.density.log_prob(self.features(observation, embedding), steps, solver)

    def to_dict(self) -> dict[str, Any]:
        """What a checkpoint stores (``density.model``)."""
        return {"kind": CAMERA_KIND, "cameras": list(self.cameras), "observation_dim": self.obs_dim,
                "embedding_mean": self.whitening.mean.tolist(), "embedding_components": self.whitening.components.tolist(),
                "density": self.density.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "density") -> CameraObservationDensity:
        """Inverse of :meth:`to_dict`; a missing key is an error naming it."""
        missing = [k for k in ("cameras", "observation_dim", "embedding_mean", "embedding_components", "density")
                   if k not in data]
        if missing:
            raise ValueError(f"{where}: missing {missing}")
        whitening = EmbeddingWhitening(np.asarray(data["embedding_mean"], np.float64),
                                       np.asarray(data["embedding_components"], np.float64))
        flow = ObservationDensity.from_dict(data["density"], where=f"{where}.density")
        return cls(flow, int(data["observation_dim"]), whitening, tuple(data["cameras"]))


def window_embeddings(net: VelocityNet, frames: dict[str, np.ndarray], frame_index: dict[str, np.ndarray],
                      batch: int = EMBED_BATCH) -> np.ndarray:
    """(N, E x cameras) float32: each window's embedding (the frame in force at its tick) by ``net``'s
    frozen encoders (eval, no augmentation), cameras in ``net.cameras`` order, as in the condition input.

    Every distinct frame is encoded once (``frames[camera]`` (F, H, W, 3) uint8, ``frame_index[camera]`` (N,)).
    """
    parts = []
    with torch.no_grad():
        for camera in net.cameras:
            encoder = net.image_encoders[camera].eval()
            per_frame = np.concatenate([
                encoder(torch.from_numpy(np.ascontiguousarray(frames[camera][i:i + batch]))).numpy()
                for i in range(0, len(frames[camera]), batch)])
            parts.append(per_frame[np.asarray(frame_index[camera], np.int64)])
    return np.concatenate(parts, axis=1).astype(np.float32)


def train_camera_density(observations: np.ndarray, embeddings: np.ndarray, obs_shift: np.ndarray, obs_scale: np.ndarray,
                         cfg: DensityConfig, cameras: tuple[str, ...], rel_tol: float = DEFAULT_REL_TOL,
                         std_floor: float = DEFAULT_STD_FLOOR, **train_kwargs: Any) -> tuple[CameraObservationDensity, list[float]]:
    """Fit the whitening on ``embeddings`` (N, E) and the flow on [observations (N, D) raw, whitened] by
    ``density.train_density`` (``train_kwargs``: steps, batch_size, lr, data_noise, seed); ``cfg``'s
    obs_dim is replaced by D + r. The observation part is normalized by the policy's shift/scale (D,)."""
    observations = np.asarray(observations, np.float64)
    whitening = EmbeddingWhitening.fit(embeddings, rel_tol, std_floor)
    features = np.concatenate([observations, whitening.apply(embeddings)], axis=1)
    cfg = DensityConfig(**{**cfg.__dict__, "obs_dim": features.shape[1]})
    shift = np.concatenate([np.asarray(obs_shift, np.float64), np.zeros(whitening.dim)])
    scale = np.concatenate([np.asarray(obs_scale, np.float64), np.ones(whitening.dim)])
    trained = train_density(features, cfg, normalization=(shift, scale), **train_kwargs)
    model = CameraObservationDensity(trained.model, observations.shape[1], whitening, cameras)
    return model.eval().requires_grad_(False), trained.losses


class CameraLogLikelihood(nn.Module):
    """What an exported camera graph computes beside the actions: (raw observation (B, D), embedding (B, E)
    of the policy's condition input) -> log p (B,), fixed solver and steps unrolled (no control flow)."""

    def __init__(self, density: CameraObservationDensity, steps: int = DEFAULT_STEPS, solver: str = DEFAULT_SOLVER) -> None:
        super().__init__()
        check_solver(solver, steps)
        self.density, self.steps, self.solver = density, steps, solver
        quadrature_weights(steps, solver)  # computed now, not while the graph is traced

    def forward(self, observation: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return self.density.log_prob(observation, embedding, self.steps, self.solver)
