"""Normalization statistics: computed once from the training set, stored in the checkpoint
and baked into the ONNX graph. The one place that defines how raw robot units map to the
network's space.

Both modes are affine, ``x_n = (x - shift) / scale``:

- ``minmax``: shift = (max + min) / 2, scale = (max - min) / 2, so the training range maps
  to [-1, 1]. A dimension whose range is below ``MIN_SCALE`` (e.g. a goal coordinate that
  never changes) gets ``scale = MIN_SCALE``: it stays finite and is reported in the summary.
- ``meanstd``: shift = mean, scale = std (floored at ``MIN_SCALE`` the same way).

Observation statistics are per observation dimension (obs_dim,); action statistics are per
joint (A,), pooled over the H steps of every chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from flow_policy_ros.errors import StatisticsError
from flow_policy_ros.policy.config import NORMALIZATION_MODES

MIN_SCALE = 1e-3

_FIELDS = ("obs_shift", "obs_scale", "act_shift", "act_scale")



@dataclass(frozen=True)
class NormalizationStats:
    """Affine normalization of observations (obs_dim,) and actions (A,)."""

    mode: str
    obs_shift: np.ndarray
    obs_scale: np.ndarray
    act_shift: np.ndarray
    act_scale: np.ndarray

    def __post_init__(self) -> None:
        if self.mode not in NORMALIZATION_MODES:
            raise StatisticsError(f"normalization mode {self.mode!r} is not one of {NORMALIZATION_MODES}")
        for name in _FIELDS:
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.ndim != 1 or value.size == 0:
                raise StatisticsError(f"statistic {name} must be a non-empty vector, got shape {value.shape}")
            if not np.all(np.isfinite(value)):
                raise StatisticsError(f"statistic {name} has non-finite values")
            object.__setattr__(self, name, value)
        if self.obs_shift.shape != self.obs_scale.shape or self.act_shift.shape != self.act_scale.shape:
            raise StatisticsError("statistics: shift and scale shapes differ")
        if np.any(self.obs_scale <= 0) or np.any(self.act_scale <= 0):
            raise StatisticsError("statistics: scales must be positive")

    @property
    def obs_dim(self) -> int:
        return int(self.obs_shift.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.act_shift.shape[0])

    @classmethod
    def fit(cls, observations: np.ndarray, actions: np.ndarray, mode: str = "minmax") -> NormalizationStats:
        """Statistics of a training set: observations (N, obs_dim), actions (N, H, A)."""
        observations = np.asarray(observations, dtype=np.float64)
        actions = np.asarray(actions, dtype=np.float64)
        if observations.ndim != 2 or actions.ndim != 3 or len(observations) != len(actions) or len(actions) == 0:
            raise StatisticsError(
                f"fit: expected observations (N, obs_dim) and actions (N, H, A) with N > 0, "
                f"got {observations.shape} and {actions.shape}"
            )
        flat_actions = actions.reshape(-1, actions.shape[-1])
        obs_shift, obs_scale = _affine(observations, mode)
        act_shift, act_scale = _affine(flat_actions, mode)
        return cls(mode, obs_shift, obs_scale, act_shift, act_scale)

    def normalize_obs(self, observation: np.ndarray) -> np.ndarray:
        return (observation - self.obs_shift) / self.obs_scale

    def normalize_actions(self, actions: np.ndarray) -> np.ndarray:
        return (actions - self.act_shift) / self.act_scale

    def unnormalize_actions(self, actions_n: np.ndarray) -> np.ndarray:
        return actions_n * self.act_scale + self.act_shift

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (also what the checkpoint stores)."""
        return {"mode": self.mode, **{name: getattr(self, name).tolist() for name in _FIELDS}}

    @classmethod
    def from_dict(cls, data: Any, where: str = "statistics") -> NormalizationStats:
        """Inverse of ``to_dict``; a missing statistic is an error naming it."""
        if not isinstance(data, dict):
            raise StatisticsError(f"{where}: expected a mapping of statistics, got {type(data).__name__}")
        missing = [name for name in ("mode", *_FIELDS) if name not in data]
        if missing:
            raise StatisticsError(f"{where}: missing statistic(s) {missing}")
        return cls(data["mode"], *(np.asarray(data[name], dtype=np.float64) for name in _FIELDS))

    def torch_buffers(self) -> dict[str, Any]:
        """The four vectors as float32 torch tensors (for modules that bake them in)."""
        import torch

        return {name: torch.tensor(getattr(self, name), dtype=torch.float32) for name in _FIELDS}


def action_reference(observations: Any, indices: list[int]) -> Any:
    """What the action frame is relative to: observations (N, obs_dim) -> (N, 1, A), numpy or torch.

    ``indices`` come from ``PolicyConfig.action_reference_indices()``: the measured positions
    of the action joints for the 'relative' frame; empty for 'absolute' (returns 0).
    The network's chunk is ``actions - action_reference(obs)``; the sampler adds it back.
    """
    if not indices:
        return 0.0
    return observations[:, indices][:, None, :]


def _affine(values: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    if mode == "minmax":
        low, high = values.min(axis=0), values.max(axis=0)
        shift, scale = (high + low) / 2.0, (high - low) / 2.0
    elif mode == "meanstd":
        shift, scale = values.mean(axis=0), values.std(axis=0)
    else:
        raise StatisticsError(f"normalization mode {mode!r} is not one of {NORMALIZATION_MODES}")
    return shift, np.maximum(scale, MIN_SCALE)
