"""The velocity network v_theta(x_t, t, c): a residual MLP over the flattened action chunk.

Why an MLP: the chunk is small (H x A = 16 x 7 = 112 numbers) and the sampler runs it
2 x N = 20 times per decision (CFG doubles the batch, N Euler steps), so per-call overhead
dominates on a CPU. A residual MLP of width 192 (3 hidden layers) is a handful of GEMMs per
step (p50 ~0.3 ms for the whole 10-step CFG sampler in ONNX Runtime on one core), and its
structure lets the exported graph do the expensive parts once per decision:

- the condition c (observation embedding) is computed once per decision, not per step;
- the time embedding depends only on t_k = k/N, fixed at export, so it folds to a constant.

Classifier-free guidance: the guided part of the (normalized) observation, by default the
goal, is replaced by a learned null vector for the unconditional branch. The rest of the
observation (the arm's state) is always seen, so the unconditional model still knows where
the arm is; guidance sharpens what the goal asks for.

Camera models: each image feature ``image.<camera>`` has its own :class:`ImageEncoder`
(``policy.image_encoder``: uint8 frames in, normalisation inside). The condition encoder's input
is ``[normalized observation vector, embedding of camera 1, ...]`` (``PolicyConfig.condition_dim``),
built by :meth:`VelocityNet.condition_input` ONCE per decision; CFG works on that input exactly as
on a state-only one: the columns of the guided fields are replaced by the learned null vector.
For ``guided_fields: [image.front]`` that is the whole front-camera embedding (what the policy
knows about where the object is); the joint positions are never replaced, so the unconditional
branch is "move as the demonstrations do from this arm state, object unknown". Both CFG branches
share the one embedding: the unconditional branch only masks it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flow_policy_ros.policy.basis import chunk_basis_matrix
from flow_policy_ros.policy.config import PolicyConfig
from flow_policy_ros.policy.image_encoder import ImageEncoder


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of flow time t in [0, 1]: (B,) -> (B, dim)."""
    half = dim // 2
    # frequencies from 1 to ~1000 rad per unit of flow time, geometrically spaced
    freqs = torch.exp(math.log(1000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class VelocityNet(nn.Module):
    """v_theta(x_t, t, c) for normalized action chunks x_t of shape (B, H, A)."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.horizon, self.action_dim, self.flow_state_rows = cfg.horizon, cfg.action_dim, cfg.flow_state_rows
        self.time_embed_dim = cfg.time_embed_dim
        width, chunk = cfg.hidden_dim, cfg.flow_state_rows * cfg.action_dim
        # derived from the config, so not stored in checkpoints (persistent=False)
        matrix = None if cfg.chunk_basis == "none" else torch.tensor(
            chunk_basis_matrix(cfg.chunk_basis, cfg.horizon, cfg.basis_size), dtype=torch.float32)
        self.register_buffer("basis", matrix, persistent=False)
        # real-time chunking: the committed prefix (normalized actions, rows >= d zeroed) and its
        # per-row mask are an extra input, projected once per decision (see ``prefix_features``)
        self.rtc = cfg.rtc_max_delay > 0
        self.register_buffer("guided_mask", torch.tensor(cfg.guided_mask(), dtype=torch.bool))
        self.null_condition = nn.Parameter(torch.zeros(cfg.condition_dim))
        self.cameras = cfg.cameras
        # camera models: one encoder per camera (keys: camera names); empty for state-only models,
        # whose state dicts are therefore unchanged
        self.image_encoders = nn.ModuleDict({
            f.camera: ImageEncoder(f.image_shape[0], f.image_shape[1], cfg.image_channels, cfg.image_keypoints,
                                   cfg.image_embed_dim, cfg.image_shift_pad)
            for f in cfg.observation.image_features
        })
        self.cond_encoder = nn.Sequential(nn.Linear(cfg.condition_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.time_encoder = nn.Sequential(nn.Linear(cfg.time_embed_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.input_proj = nn.Linear(chunk, width)
        # no biases (and SiLU(0) = 0): an empty prefix (d = 0, all zeros) adds exactly nothing, so
        # plain sampling of an RTC model is the same computation with or without the prefix inputs
        self.prefix_encoder = nn.Sequential(
            nn.Linear(cfg.horizon * (cfg.action_dim + 1), width, bias=False), nn.SiLU(), nn.Linear(width, width, bias=False),
        ) if self.rtc else None
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(cfg.num_layers))
        self.output_proj = nn.Linear(width, chunk)
        self.activation = nn.SiLU()
        # Start as the zero velocity field: early samples stay at the noise scale.
        nn.init.zeros_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Chunks (B, H, A) -> flow state (B, K, A): c = M^T x (identity without a basis)."""
        return x if self.basis is None else torch.matmul(self.basis.t(), x)

    def decode(self, c: torch.Tensor) -> torch.Tensor:
        """Flow state (B, K, A) -> chunks (B, H, A): x = M c (identity without a basis)."""
        return c if self.basis is None else torch.matmul(self.basis, c)

    def condition_input(self, obs_n: torch.Tensor, images: dict[str, torch.Tensor] | None = None,
                        augment: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """The condition encoder's input (B, condition_dim): normalized observations (B, obs_dim)
        followed by each camera's embedding of ``images[camera]`` (B, Hc, Wc, 3) uint8.

        A state-only model returns ``obs_n`` itself. ``augment`` (training only): random-shift the
        frames (``generator`` draws the shifts). Call it once per decision: every solver step and
        both CFG branches reuse the result.
        """
        if not self.cameras:
            return obs_n
        missing = [c for c in self.cameras if images is None or c not in images]
        if missing:
            raise ValueError(f"this model observes camera(s) {list(self.cameras)}; no frames given for {missing}")
        parts = [obs_n] + [self.image_encoders[c](images[c], augment, generator) for c in self.cameras]
        return torch.cat(parts, dim=-1)

    def condition(self, obs_n: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Condition features (B, width) from the condition input (B, condition_dim): the normalized
        observations (B, obs_dim) of a state-only model, :meth:`condition_input` of a camera model.

        ``drop`` (B,) bool: rows whose guided fields are replaced by the null condition.
        """
        if drop is not None:
            replace = drop[:, None] & self.guided_mask[None, :]
            obs_n = torch.where(replace, self.null_condition.expand_as(obs_n), obs_n)
        return self.cond_encoder(obs_n)

    def unconditional(self, obs_n: torch.Tensor) -> torch.Tensor:
        """Condition features of the unconditional branch (guided fields all nulled)."""
        return self.condition(obs_n, torch.ones(obs_n.shape[0], dtype=torch.bool, device=obs_n.device))

    def prefix_features(self, prefix: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Features (B, width) of a committed prefix: normalized actions ``prefix`` (B, H, A) (rows
        with mask 0 are ignored) and ``mask`` (B, H), 1 on the committed rows i < d.

        Part of the state, like the arm's position: both CFG branches get the same features.
        """
        if not self.rtc:
            raise ValueError("this velocity network was not trained for real-time chunking (rtc_max_delay = 0)")
        given = (prefix * mask[:, :, None]).reshape(prefix.shape[0], -1)
        return self.prefix_encoder(torch.cat([given, mask], dim=-1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, prefix_feat: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity (B, K, A) at flow state x (B, K, A) (K = H without a basis), flow time t (B,) or (1,),
        condition (B, width).

        ``prefix_feat`` (B, width): ``prefix_features`` of a committed prefix (RTC models; None = none).
        """
        return self.velocity_flat(x.reshape(x.shape[0], -1), t, cond, None, prefix_feat).reshape(x.shape)

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """Time features (B or 1, width) of flow time t (B,) or (1,)."""
        return self.time_encoder(sinusoidal_embedding(t, self.time_embed_dim))

    def velocity_flat(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, time_feat: torch.Tensor | None = None,
                      prefix_feat: torch.Tensor | None = None) -> torch.Tensor:
        """As ``forward`` on flattened states: x (B, K*A) -> velocity (B, K*A).

        ``time_feat`` may carry precomputed ``time_features(t)`` (the exporter bakes them in).
        ``prefix_feat`` (B, width): ``prefix_features`` of a committed prefix (RTC models; None =
        no prefix, the same as d = 0).
        """
        if prefix_feat is not None and not self.rtc:
            raise ValueError("this velocity network was not trained for real-time chunking (rtc_max_delay = 0)")
        if time_feat is None:
            time_feat = self.time_features(t)
        h = self.input_proj(x) + time_feat + cond
        if prefix_feat is not None:
            h = h + prefix_feat
        for layer in self.hidden:
            h = h + layer(self.activation(h))
        return self.output_proj(self.activation(h))
