"""Training aids of a camera model's image path: a privileged target for its embedding
(``train.image_aux_feature``) and frame-lag augmentation (``train.image_lag_frames``).

Why: trained by the flow-matching loss alone, the keypoint encoder learns where the object is only
through the action chunks' error, a weak and noisy signal for the centimetre precision a reach
needs. The scripted expert knows the object's position and ``collect`` records it (on
``data.goal_topic``), so during training a linear head predicts it from the camera embedding and
its mean squared error (on the standardized position) is added to the loss, weighted by
``train.image_aux_weight``. It only shapes the encoder: the policy never reads the position, the
head is not part of :class:`~flow_policy_ros.policy.model.VelocityNet`, and the exported graph has
no such input. The head's weights travel in the checkpoint (``Checkpoint.aux_state``) so a
resumed run continues it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from flow_policy_ros.policy.model import VelocityNet

#: The smallest scale of a target value, as a fraction of the largest value's std.
STD_FLOOR_FRACTION = 0.1
#: Windows per forward pass when the head is measured on the validation windows.
VALIDATION_BATCH = 256


class AuxTarget(nn.Module):
    """A linear head: camera embedding (B, E) -> target (B, d), in the target's units.

    Args:
        embed_dim: E, the concatenated embedding of every camera (``image_embed_dim`` x cameras).
        mean, std: (d,) the target's statistics over the training windows. A value that barely
            varies (the cube's height: 0.2 mm of settling) is scaled by at least
            :data:`STD_FLOOR_FRACTION` of the largest std, so its noise does not weigh as much
            as what the image shows.
        weight: the loss weight (``train.image_aux_weight``).
        feature: the target's feature name (for messages and the checkpoint).
    """

    def __init__(self, embed_dim: int, mean: np.ndarray, std: np.ndarray, weight: float, feature: str) -> None:
        super().__init__()
        mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        std = np.maximum(std, max(STD_FLOOR_FRACTION * float(std.max(initial=0.0)), 1e-6))
        self.feature, self.weight = feature, float(weight)
        self.head = nn.Linear(embed_dim, len(mean))
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("std", torch.from_numpy(std))

    @staticmethod
    def embedding(condition_input: torch.Tensor, obs_dim: int) -> torch.Tensor:
        """The camera columns (B, E) of ``VelocityNet.condition_input(...)`` (B, obs_dim + E)."""
        return condition_input[:, obs_dim:]

    def loss(self, embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted mean squared error of the standardized prediction; target (B, d) in its units."""
        predicted = self.head(embedding)
        return self.weight * torch.mean((predicted - (target - self.mean) / self.std) ** 2)

    def predict(self, embedding: torch.Tensor) -> torch.Tensor:
        """The target (B, d) in its units, as the head reads it from ``embedding`` (B, E)."""
        return self.head(embedding) * self.std + self.mean

    def state(self) -> dict[str, Any]:
        """What the checkpoint stores (``Checkpoint.aux_state``)."""
        return {"feature": self.feature, "weight": self.weight,
                "state": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}}


@torch.no_grad()
def validation_rmse(net: VelocityNet, aux: AuxTarget, obs_n: torch.Tensor, frames: Any,
                    target: torch.Tensor) -> float:
    """Root mean squared error (the target's units, over all of its d values) of the head on the
    validation windows: obs_n (V, obs_dim), ``frames(index)`` their camera frames, target (V, d)."""
    total, count = 0.0, 0
    for start in range(0, obs_n.shape[0], VALIDATION_BATCH):
        index = torch.arange(start, min(start + VALIDATION_BATCH, obs_n.shape[0]), device=obs_n.device)
        condition = net.condition_input(obs_n[index], frames(index))
        error = aux.predict(aux.embedding(condition, obs_n.shape[1])) - target[index]
        total += float(torch.sum(error ** 2))
        count += error.numel()
    return float(np.sqrt(total / max(count, 1)))


class FrameLag:
    """``train.image_lag_frames``: each sample's frame is its window's frame in force, or one up to
    ``max_lag`` camera frames older (uniform), never before its episode's first frame.

    Frames are stored once per episode in time order (``Windows.frames``), so frame index - r is
    the camera frame r periods earlier (for a LeRobot dataset, whose identical consecutive decoded
    frames share a slot, at least r periods earlier).

    Args:
        max_lag: the largest lag (camera frames); 0: the frame in force, always.
        windows: the training windows (``frame_index``, ``episode_index``).
        cameras: the camera names.
        train_index: (N_train,) the training windows' indices into ``windows``.
    """

    def __init__(self, max_lag: int, windows: Any, cameras: tuple[str, ...], train_index: torch.Tensor,
                 device: torch.device) -> None:
        self.max_lag = int(max_lag)
        self.first: dict[str, torch.Tensor] = {}
        if not self.max_lag:
            return
        episodes = np.asarray(windows.episode_index)
        for camera in cameras:
            index = np.asarray(windows.frame_index[camera])
            first = np.full(episodes.max() + 1 if len(episodes) else 0, np.iinfo(np.int64).max, np.int64)
            np.minimum.at(first, episodes, index)  # an episode's windows start at its first frame
            self.first[camera] = torch.from_numpy(first[episodes]).to(device)[train_index]

    def __call__(self, camera: str, frame_index: torch.Tensor, batch: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
        """The (B,) frame indices to use for the batch's windows ``batch`` (indices into the training
        windows) whose frames in force are ``frame_index`` (B,)."""
        if not self.max_lag:
            return frame_index
        lag = torch.randint(0, self.max_lag + 1, frame_index.shape, generator=generator, device=frame_index.device)
        return torch.maximum(frame_index - lag, self.first[camera][batch])
