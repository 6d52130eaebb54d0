"""Observation density by flow matching: log p(observation) for the out-of-distribution shield.

What it models: the low-dimensional observation vector (B, D) (joint positions, velocities,
goal, ...; D = obs_dim, ~17 here), normalized exactly as the policy normalizes it
(``NormalizationStats``' observation shift/scale), y = (x - shift) / scale.

Why a second small velocity network (:class:`DensityVelocityNet`) and not a head on the policy:
the policy's velocity network models ACTION chunks given the observation; the observation is
its condition, not its flow state, so it holds no velocity field over observations to take
the divergence of. A separate MLP v_phi(y, t) over the observation alone is small (two residual
layers of width 64: ~20 us per evaluation with its exact divergence in ONNX Runtime), trains in
seconds, can be added to or left out of an exported graph without touching the policy's weights,
and keeps the exact divergence cheap (D tangents of width 64). Its time features are its own
(:func:`time_embedding`, low frequencies): a log-likelihood integrates over t, so v must be
smooth in t for a few fixed steps to be accurate.

Flow convention: THE one of :mod:`flow_policy_ros.policy.flow` (its ``interpolate``,
``target_velocity`` and ``integrate`` are used here, nothing is redefined): t = 0 is noise
y0 ~ N(0, I), t = 1 is data y1 (a normalized observation), y_t = (1 - t) y0 + t y1,
u = y1 - y0, and dy/dt = v(y, t) carries p_0 = N(0, I) to p_1 (the data density).

Log-likelihood (instantaneous change of variables, Chen et al. 2018): along a solution y(t),

    d/dt log p_t(y(t)) = -div v(y(t), t),   so   log p_1(y(1)) = log p_0(y(0)) - int_0^1 div v(y(t), t) dt.

Given an observation y at t = 1 we integrate BACKWARDS, from t = 1 to t = 0, the augmented
state (y, l) with

    dy/dt = v(y, t),   dl/dt = div v(y, t),   y(1) = y,  l(1) = 0,

so that z = y(0) is the point of noise the observation came from and
l(0) = l(1) - int_0^1 div v dt = -int_0^1 div v dt. Hence

    log p_1(y) = log N(z; 0, I) + l(0)                                    (nats, normalized units)
    log p(x)   = log p_1((x - shift) / scale) - sum_i log scale_i          (nats, raw units)

The second line is the log-det-Jacobian of the affine normalization: ``log_prob`` returns the
density of the observation in RAW robot units (rad, rad/s, m: the units of the observation
spec), so scores of models with different statistics are comparable only per unit of state.
The integration is fixed-step and uses the same solver code as the policy's sampler
(``flow.integrate`` with t_start = 1, t_end = 0; 'rk4' recommended, see docs/density_solvers.md);
the loop unrolls when traced (no Loop/If in ONNX).

Divergence, written in plain torch ops (Linear, Sigmoid, Mul, MatMul) so that the exported graph
holds no autograd: tangents are pushed forward through the MLP alongside the activations,
tangent' = W tangent through a Linear, act'(pre) * tangent through an activation, giving J p for
every probe p in one batched (B, P, width) pass. Then div v ~ w * sum_p p^T J p:

- ``exact`` (default, small D): the P = D basis vectors e_i, w = 1, so the sum is the trace;
- ``hutchinson`` (large D with residual layers; the camera density keeps the exact trace, see
  docs/density_shield.md "Camera model"): P Rademacher probes drawn ONCE at
  construction from ``probe_seed`` (a buffer, so they are fixed in the checkpoint and the graph),
  w = 1 / P; unbiased over the probe draw (E[p p^T] = I), deterministic for a given model.

Limits: a dimension that is constant in the training set gets the normalization's MIN_SCALE, so
the data is a delta there and the exact density diverges; near-degenerate (strongly coupled)
dimensions make the field stiff near t = 1. ``train_density(data_noise=...)`` smooths both
(docs/density_solvers.md).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from flow_policy_ros.policy.flow import check_solver, integrate, interpolate, network_evaluations, target_velocity
from flow_policy_ros.policy.normalization import NormalizationStats

#: (y (B, D), t float) -> (velocity (B, D), divergence (B,)); what :func:`log_likelihood` integrates.
FieldFn = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]

DIVERGENCES = ("exact", "hutchinson")
ACTIVATIONS = ("silu", "softplus")
#: Default solver and step count of the log-likelihood (docs/density_solvers.md: RK4 x 8 is within
#: ~1e-3 nat of RK4 x 256 on a trained 17-D density; 32 network evaluations).
DEFAULT_SOLVER, DEFAULT_STEPS = "rk4", 8


@dataclass(frozen=True)
class DensityConfig:
    """Shape of the density's velocity network.

    Attributes:
        obs_dim: D, observation dimensions modelled.
        hidden_dim: width of the residual MLP.
        num_layers: residual hidden layers.
        time_embed_dim: sinusoidal time features (even).
        max_frequency: highest angular frequency of the time features, rad per unit of flow time
            (see :func:`time_embedding`: low, so that the fixed-step solver resolves v in t).
        divergence: 'exact' (Jacobian trace, D tangents) or 'hutchinson' (``probes`` fixed probes).
        probes: P, Rademacher probes of the Hutchinson estimator (ignored for 'exact').
        probe_seed: seed of the probe draw (the probes are a buffer: fixed once constructed).
        activation: 'silu' or 'softplus' (whose derivative is one sigmoid: fewer graph nodes).
    """

    obs_dim: int
    hidden_dim: int = 64
    num_layers: int = 2
    time_embed_dim: int = 16
    max_frequency: float = 8.0
    divergence: str = "exact"
    probes: int = 8
    probe_seed: int = 0
    activation: str = "silu"

    def __post_init__(self) -> None:
        checks = [
            (self.obs_dim >= 1, f"obs_dim must be >= 1, got {self.obs_dim}"),
            (self.hidden_dim >= 1, f"hidden_dim must be >= 1, got {self.hidden_dim}"),
            (self.num_layers >= 0, f"num_layers must be >= 0, got {self.num_layers}"),
            (self.time_embed_dim >= 2 and self.time_embed_dim % 2 == 0,
             f"time_embed_dim must be even and >= 2, got {self.time_embed_dim}"),
            (self.max_frequency > 0, f"max_frequency must be > 0, got {self.max_frequency}"),
            (self.divergence in DIVERGENCES, f"divergence must be one of {DIVERGENCES}, got {self.divergence!r}"),
            (self.probes >= 1, f"probes must be >= 1, got {self.probes}"),
            (self.activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {self.activation!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"density config: {message}")


def time_embedding(t: torch.Tensor, dim: int, max_frequency: float) -> torch.Tensor:
    """Sinusoidal features of flow time t (B,) -> (B, dim), frequencies 1 .. ``max_frequency``
    rad per unit of flow time, geometrically spaced.

    Not the policy's ``model.sinusoidal_embedding`` (frequencies up to 1000): the policy only
    evaluates its field on the solver's grid, but a log-likelihood is an integral over t, and
    a field that oscillates at 1000 rad in t needs many steps to resolve. Measured on the trained
    17-D density of scripts/density_solver_table.py, max |log p error| of RK4 against RK4 x 256 at
    N = 8 / 16 / 32 / 64 steps: 0.12 / 0.09 / 0.04 / 0.014 nat with the policy's embedding,
    1.6e-3 / 1.3e-4 / 8.5e-6 / 5.5e-7 with this one (max_frequency 8; 20 gave 9e-3 at N = 8 and a
    slightly lower held-out likelihood, 3 about the same as 8).
    """
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float64, device=t.device) / max(1, half - 1)
    freqs = torch.exp(math.log(max_frequency) * exponents).to(t.dtype)
    angles = t[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def _activation_and_slope(pre: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """act(pre) and act'(pre) for ``kind`` 'silu' (5 graph nodes) or 'softplus' (2 nodes: softplus' =
    sigmoid, which is why the shipped densities use it: the exported score's cost is its node count)."""
    if kind == "softplus":
        return torch.nn.functional.softplus(pre), torch.sigmoid(pre)
    return _silu_and_slope(pre)


def _silu_and_slope(pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SiLU(pre) = pre s and its derivative s (1 + pre (1 - s)) = s + SiLU(pre) (1 - s), s = sigmoid(pre)
    (the second form reuses the activation: one node fewer per layer in the exported graph)."""
    s = torch.sigmoid(pre)
    act = pre * s
    return act, s + act * (1.0 - s)


class DensityVelocityNet(nn.Module):
    """v_phi(y, t) over normalized observations y (B, D), with its divergence in closed form.

    h = W_in y + T(t);  h <- h + W_k SiLU(h) (k = 1..L);  v = W_out SiLU(h).
    The time path T(t) (sinusoidal features -> MLP) does not depend on y, so it carries no tangent.
    """

    def __init__(self, cfg: DensityConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width, dim = cfg.hidden_dim, cfg.obs_dim
        self.time_encoder = nn.Sequential(nn.Linear(cfg.time_embed_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.input_proj = nn.Linear(dim, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(cfg.num_layers))
        self.output_proj = nn.Linear(width, dim)
        if cfg.divergence == "exact":
            probes, weight = torch.eye(dim), 1.0
        else:
            gen = torch.Generator().manual_seed(cfg.probe_seed)
            probes = torch.randint(0, 2, (cfg.probes, dim), generator=gen).to(torch.float32) * 2.0 - 1.0
            weight = 1.0 / cfg.probes
        self.register_buffer("probes", probes)  # (P, D)
        self.probe_weight = weight
        #: flow time -> (1, width) time features, filled by :meth:`freeze_time_features` (export)
        self._frozen_time: dict[float, torch.Tensor] = {}

    def freeze_time_features(self, times: list[float]) -> None:
        """Precompute the time features of the given flow times (weights must be final): a traced
        graph then holds them as constants instead of running the time MLP at every stage."""
        with torch.no_grad():
            self._frozen_time = {float(t): self.time_features(torch.full((1,), float(t))).detach() for t in times}

    def time_features_at(self, t: float, like: torch.Tensor) -> torch.Tensor:
        """(1, width) features of the constant flow time t (frozen when available)."""
        frozen = self._frozen_time.get(float(t))
        if frozen is not None:
            return frozen.to(like.dtype)
        return self.time_features(torch.full((1,), t, dtype=like.dtype, device=like.device))

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """(B or 1, width) features of flow time t (B,) or (1,)."""
        features = time_embedding(t.to(self.input_proj.weight.dtype), self.cfg.time_embed_dim, self.cfg.max_frequency)
        return self.time_encoder(features)

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Velocity (B, D) at y (B, D), flow time t (B,) or (1,)."""
        h = self.input_proj(y) + self.time_features(t)
        for layer in self.hidden:
            h = h + layer(self._act(h))
        return self.output_proj(self._act(h))

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(h) if self.cfg.activation == "softplus" else torch.nn.functional.silu(h)

    def velocity_and_divergence(self, y: torch.Tensor, t: torch.Tensor,
                                time_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity (B, D) and divergence (B,) at y (B, D), t (B,) or (1,), by forward tangents.

        tangent (B, P, width) = J_h(y) p for every probe p (rows of ``probes`` (P, D)); at the
        output J_v(y) p (B, P, D), and div ~ w sum_p p . J_v p (exact trace for the basis probes).
        With no residual layer and the exact divergence, J_v = W_out diag(s) W_in, so
        tr J_v = s . c with c_k = sum_i W_out[i, k] W_in[k, i]: one MatMul (c is a constant of the
        weights). ``time_features``: precomputed features of t (:meth:`time_features_at`).
        """
        h = self.input_proj(y) + (self.time_features(t) if time_features is None else time_features)
        if not self.hidden and self.probe_weight == 1.0 and self.cfg.divergence == "exact":
            act, slope = _activation_and_slope(h, self.cfg.activation)
            trace_weights = (self.output_proj.weight.t() * self.input_proj.weight).sum(dim=1)  # (width,)
            return self.output_proj(act), torch.matmul(slope, trace_weights)
        tangent = torch.matmul(self.probes, self.input_proj.weight.t()).unsqueeze(0)  # (1, P, width)
        for layer in self.hidden:
            act, slope = _activation_and_slope(h, self.cfg.activation)
            tangent = tangent + torch.matmul(slope.unsqueeze(1) * tangent, layer.weight.t())
            h = h + layer(act)
        act, slope = _activation_and_slope(h, self.cfg.activation)
        velocity = self.output_proj(act)
        jvp = torch.matmul(slope.unsqueeze(1) * tangent, self.output_proj.weight.t())  # (B, P, D)
        divergence = (jvp * self.probes).sum(dim=(1, 2))
        return velocity, divergence * self.probe_weight if self.probe_weight != 1.0 else divergence


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) (B,) of z (B, D)."""
    return -0.5 * (z * z).sum(dim=1) - 0.5 * z.shape[1] * math.log(2.0 * math.pi)


def log_likelihood(field_fn: FieldFn, y: torch.Tensor, steps: int = DEFAULT_STEPS, solver: str = DEFAULT_SOLVER) -> torch.Tensor:
    """log p_1(y) (B,) in nats of normalized points y (B, D) under the flow of ``field_fn``.

    Integrates the augmented state [y, l] (B, D + 1) from t = 1 to t = 0 with ``steps`` fixed
    steps of ``solver`` (``flow.integrate``, dt = -1/steps): dy/dt = v, dl/dt = div v, l(1) = 0;
    returns log N(y(0); 0, I) + l(0) (see the module docstring for the sign).
    """
    check_solver(solver, steps)
    dim = y.shape[1]

    def augmented(state: torch.Tensor, t: float) -> torch.Tensor:
        velocity, divergence = field_fn(state[:, :dim], t)
        return torch.cat([velocity, divergence.unsqueeze(1)], dim=1)

    state = torch.cat([y, torch.zeros_like(y[:, :1])], dim=1)
    end = integrate(augmented, state, steps, solver, t_start=1.0, t_end=0.0)
    return standard_normal_log_prob(end[:, :dim]) + end[:, dim]


def quadrature_weights(steps: int, solver: str) -> torch.Tensor:
    """(E,) float64, the weight of each of the E network evaluations of ``flow.integrate`` from t = 1 to
    t = 0 in the integral of a quantity that does not feed back into the state (dl/dt = f(y(t), t)):
    l(0) - l(1) = sum_j w_j f_j, in the order the evaluations are made. Measured from ``integrate``
    itself (one-hot rates, E dimensions), so it is the solver's own rule (RK4: dt (1, 2, 2, 1) / 6 per
    step), not a copy; cached as floats, so a traced graph holds them as one constant."""
    return torch.tensor(_quadrature_weights(steps, solver), dtype=torch.float64)


@functools.lru_cache(maxsize=64)
def _quadrature_weights(steps: int, solver: str) -> tuple[float, ...]:
    count = network_evaluations(solver, steps)
    calls: list[int] = []

    def one_hot(state: torch.Tensor, t: float) -> torch.Tensor:
        rate = torch.zeros_like(state)
        rate[:, len(calls)] = 1.0
        calls.append(1)
        return rate

    with torch.no_grad():
        weights = integrate(one_hot, torch.zeros(1, count, dtype=torch.float64), steps, solver, 1.0, 0.0)[0]
    return tuple(float(w) for w in weights)


def observation_normalization(observations: np.ndarray, mode: str = "minmax") -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale) (D,) of the policy's observation normalization of ``observations`` (N, D).

    The observation half of ``NormalizationStats.fit`` (the one definition of the affine map);
    the zero action set only fills the unused action half.
    """
    observations = np.asarray(observations, dtype=np.float64)
    stats = NormalizationStats.fit(observations, np.zeros((len(observations), 1, 1)), mode)
    return stats.obs_shift, stats.obs_scale


class ObservationDensity(nn.Module):
    """log p(x) of raw observations x (B, D): normalization + :class:`DensityVelocityNet`."""

    def __init__(self, cfg: DensityConfig, obs_shift: np.ndarray, obs_scale: np.ndarray) -> None:
        super().__init__()
        shift, scale = np.asarray(obs_shift, np.float64), np.asarray(obs_scale, np.float64)
        if shift.shape != (cfg.obs_dim,) or scale.shape != (cfg.obs_dim,) or np.any(scale <= 0):
            raise ValueError(f"density: obs_shift/obs_scale must be ({cfg.obs_dim},) with scale > 0, "
                             f"got {shift.shape} and {scale.shape}")
        self.net = DensityVelocityNet(cfg)
        self._shift64, self._scale64 = shift, scale
        self.register_buffer("obs_shift", torch.tensor(shift, dtype=torch.float32))
        self.register_buffer("obs_scale", torch.tensor(scale, dtype=torch.float32))
        # log |det d y / d x| = -sum log scale, computed in float64 once
        self.register_buffer("log_det_normalization", torch.tensor(-float(np.log(scale).sum()), dtype=torch.float32))

    @classmethod
    def from_stats(cls, cfg: DensityConfig, stats: NormalizationStats) -> ObservationDensity:
        """A density over the observations as the policy with ``stats`` normalizes them."""
        return cls(cfg, stats.obs_shift, stats.obs_scale)

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the model (for ``torch.save`` inside a checkpoint): the
        config, the normalization (float64 lists, as given) and the weights."""
        return {"config": asdict(self.net.cfg), "obs_shift": self._shift64.tolist(),
                "obs_scale": self._scale64.tolist(), "state": self.state_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "density") -> ObservationDensity:
        """Inverse of ``to_dict``; a missing key or a mismatched weight is an error naming it."""
        missing = [key for key in ("config", "obs_shift", "obs_scale", "state") if key not in data]
        if missing:
            raise ValueError(f"{where}: missing {missing}")
        model = cls(DensityConfig(**data["config"]), np.asarray(data["obs_shift"]), np.asarray(data["obs_scale"]))
        model.load_state_dict(data["state"])
        return model

    def normalize(self, observation: torch.Tensor) -> torch.Tensor:
        """Raw (B, D) -> normalized (B, D), the policy's affine map."""
        return (observation - self.obs_shift) / self.obs_scale

    def field(self, y: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """:data:`FieldFn` of the network at a constant flow time t."""
        return self.net.velocity_and_divergence(y, torch.full((1,), t, dtype=y.dtype, device=y.device),
                                                self.net.time_features_at(t, y))

    def log_prob_normalized(self, y: torch.Tensor, steps: int = DEFAULT_STEPS, solver: str = DEFAULT_SOLVER) -> torch.Tensor:
        """log p_1(y) (B,) of normalized observations y (B, D), nats per unit of normalized space.

        A network with one hidden layer and the exact divergence takes :meth:`_log_prob_one_layer`
        (the same value, fewer graph nodes); any other the augmented integration of :func:`log_likelihood`."""
        net = self.net
        if not net.hidden and net.cfg.divergence == "exact":
            return self._log_prob_one_layer(y, steps, solver)
        return log_likelihood(self.field, y, steps, solver)

    def _log_prob_one_layer(self, y: torch.Tensor, steps: int, solver: str) -> torch.Tensor:
        """:func:`log_likelihood` for v = W_out SiLU(W_in y + T(t)): div v = s . c (s the SiLU slopes,
        c constant, see ``velocity_and_divergence``) does not feed back into y, so only y is integrated
        (``flow.integrate``) and the divergence integral is ONE product of the E evaluations' slopes,
        concatenated (B, E * width), with kron(w, c), w the solver's :func:`quadrature_weights`."""
        check_solver(solver, steps)
        net = self.net
        slopes: list[torch.Tensor] = []

        def velocity(state: torch.Tensor, t: float) -> torch.Tensor:
            # the time features join the bias: one Gemm, no Add, in the graph
            h = torch.nn.functional.linear(state, net.input_proj.weight, net.input_proj.bias + net.time_features_at(t, state)[0])
            act, slope = _activation_and_slope(h, net.cfg.activation)
            slopes.append(slope)
            return net.output_proj(act)

        z = integrate(velocity, y, steps, solver, t_start=1.0, t_end=0.0)
        trace_weights = (net.output_proj.weight.t() * net.input_proj.weight).sum(dim=1)  # c (width,)
        weights = quadrature_weights(steps, solver).to(y.dtype).to(y.device)
        combined = (weights[:, None] * trace_weights[None, :]).reshape(-1)  # (E * width,)
        divergence_integral = torch.matmul(torch.cat(slopes, dim=1), combined)
        return standard_normal_log_prob(z) + divergence_integral

    def log_prob(self, observation: torch.Tensor, steps: int = DEFAULT_STEPS, solver: str = DEFAULT_SOLVER) -> torch.Tensor:
        """log p(x) (B,) of raw observations x (B, D), nats per unit of raw state (rad, rad/s, m)."""
        return self.log_prob_normalized(self.normalize(observation), steps, solver) + self.log_det_normalization

    def sample(self, noise: torch.Tensor, steps: int = DEFAULT_STEPS, solver: str = DEFAULT_SOLVER) -> torch.Tensor:
        """Raw observations (B, D) from noise z (B, D) at t = 0, integrated forward to t = 1."""
        def velocity(y: torch.Tensor, t: float) -> torch.Tensor:
            return self.net(y, torch.full((1,), t, dtype=y.dtype, device=y.device))

        return integrate(velocity, noise, steps, solver) * self.obs_scale + self.obs_shift


class ObservationLogLikelihood(nn.Module):
    """What an exported graph computes: observation (B, D) raw float32 -> log p (B,), with a
    fixed solver and step count unrolled (no control flow when traced)."""

    def __init__(self, density: ObservationDensity, steps: int = DEFAULT_STEPS, solver: str = DEFAULT_SOLVER) -> None:
        super().__init__()
        check_solver(solver, steps)
        self.density, self.steps, self.solver = density, steps, solver
        _quadrature_weights(steps, solver)  # computed now, not while the graph is traced

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return self.density.log_prob(observation, self.steps, self.solver)


@dataclass
class TrainedDensity:
    """Result of :func:`train_density`: the model (EMA weights when ``ema_decay`` > 0, eval
    mode, no grad), the normalization it carries, and the loss per step."""

    model: ObservationDensity
    obs_shift: np.ndarray
    obs_scale: np.ndarray
    losses: list[float] = field(default_factory=list)


def train_density(
    observations: np.ndarray,
    cfg: DensityConfig | None = None,
    stats: NormalizationStats | None = None,
    normalization: str | tuple[np.ndarray, np.ndarray] = "minmax",
    steps: int = 1000,
    batch_size: int = 256,
    lr: float = 2e-3,
    ema_decay: float = 0.995,
    data_noise: float = 0.0,
    seed: int = 0,
) -> TrainedDensity:
    """Fit the density of ``observations`` (N, D) (raw units) by flow matching.

    Normalization: the policy's ``stats`` if given (its observation half), else fitted here with
    ``normalization`` ('minmax' or 'meanstd'), or a given (shift, scale) pair of (D,) arrays.
    Loss: E ||v(y_t, t) - (y1 - y0)||^2, t ~ U(0, 1),
    y0 ~ N(0, I), y1 a normalized observation (``flow.interpolate``/``flow.target_velocity``).
    Adam with the policy's schedule (``train.lr_factor``) and, if ``ema_decay`` > 0, its EMA.
    ``data_noise`` > 0 (std, normalized units) adds fresh Gaussian noise to every y1: the model
    then learns the data density smoothed by N(0, data_noise^2 I), which bounds how sharply it
    contracts near-degenerate (strongly correlated) dimensions at t = 1, at the price of not
    separating deviations smaller than about data_noise * scale in raw units. Default 0.
    """
    # imported here: policy.train will import this module for ``flow-policy train``
    from flow_policy_ros.policy.train import ema_decay as ema_schedule
    from flow_policy_ros.policy.train import lr_factor, update_ema

    observations = np.asarray(observations, dtype=np.float64)
    if observations.ndim != 2 or len(observations) < 2 or not np.all(np.isfinite(observations)):
        raise ValueError(f"train_density: expected finite observations (N >= 2, D), got shape {observations.shape}")
    cfg = cfg or DensityConfig(obs_dim=observations.shape[1])
    if data_noise < 0:
        raise ValueError(f"train_density: data_noise must be >= 0, got {data_noise}")
    if cfg.obs_dim != observations.shape[1]:
        raise ValueError(f"train_density: config obs_dim {cfg.obs_dim} but observations have D = {observations.shape[1]}")
    if stats is not None:
        shift, scale = stats.obs_shift, stats.obs_scale
    elif isinstance(normalization, tuple):
        shift, scale = normalization
    else:
        shift, scale = observation_normalization(observations, normalization)
    torch.manual_seed(seed)
    model = ObservationDensity(cfg, shift, scale)
    ema = copy.deepcopy(model).requires_grad_(False) if ema_decay > 0 else None
    data = model.normalize(torch.tensor(observations, dtype=torch.float32))
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(step, steps)
        y1 = data[torch.randint(0, len(data), (batch_size,), generator=gen)]
        if data_noise > 0:
            y1 = y1 + data_noise * torch.randn(y1.shape, generator=gen)
        y0 = torch.randn(y1.shape, generator=gen)
        t = torch.rand(batch_size, generator=gen)
        loss = torch.mean((model.net(interpolate(y0, y1, t), t) - target_velocity(y0, y1)) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                update_ema(ema, model, ema_schedule(step, ema_decay))
        losses.append(loss.item())
    final = (ema if ema is not None else model).eval().requires_grad_(False)
    return TrainedDensity(final, np.asarray(shift, np.float64), np.asarray(scale, np.float64), losses)


class GaussianFlowField:
    """The optimal flow-matching field of Gaussian data, in closed form (float64).

    Data y1 ~ N(mu, Sigma), noise y0 ~ N(0, I), independent; y_t = (1 - t) y0 + t y1. Then
    y_t ~ N(t mu, Sigma_t), Sigma_t = (1 - t)^2 I + t^2 Sigma, and u = y1 - y0 is jointly Gaussian
    with y_t: E u = mu, Cov(u, y_t) = t Sigma - (1 - t) I =: C_t (= dSigma_t/dt / 2). So

        v(y, t) = E[u | y_t = y] = mu + C_t Sigma_t^-1 (y - t mu),   div v = tr(C_t Sigma_t^-1),

    affine in y. With Sigma = Q diag(lam) Q^T, C_t Sigma_t^-1 = Q diag(a(t)) Q^T,
    a_i(t) = (t lam_i - (1 - t)) / ((1 - t)^2 + t^2 lam_i). The flow carries N(0, I) to
    N(mu, Sigma) exactly, so :func:`log_likelihood` with this field must give the Gaussian log p.
    """

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor) -> None:
        self.mu, self.sigma = mu.to(torch.float64), sigma.to(torch.float64)
        self.lam, self.q = torch.linalg.eigh(self.sigma)
        if float(self.lam.min()) <= 0:
            raise ValueError("GaussianFlowField: Sigma must be positive definite")

    def __call__(self, y: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        a = (t * self.lam - (1.0 - t)) / ((1.0 - t) ** 2 + t * t * self.lam)  # (D,)
        gain = (self.q * a) @ self.q.t()  # C_t Sigma_t^-1, symmetric
        velocity = self.mu + (y - t * self.mu) @ gain
        return velocity, torch.full(y.shape[:1], float(a.sum()), dtype=y.dtype)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """Exact log N(y; mu, Sigma) (B,)."""
        return torch.distributions.MultivariateNormal(self.mu, self.sigma).log_prob(y)
