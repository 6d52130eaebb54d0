"""Conditional flow matching: THE time convention, the loss, and the one fixed-step integrator.

Time convention (project-wide): t = 0 is noise x0 ~ N(0, I), t = 1 is data x1 (the
normalized action chunk). The straight path is x_t = (1 - t) * x0 + t * x1 with target
velocity u = x1 - x0, and sampling integrates dx/dt = v(x, t) from t = 0 to t = 1.
NOTE: this is the opposite of LeRobot's / openpi's pi0 convention (there t = 1 is noise and
the integration runs backwards); do not mix code from there without flipping t.

Classifier-free guidance: training replaces the guided condition by a learned null with
probability p_uncond; sampling evaluates the conditional and unconditional velocity in ONE
batched call (batch 2B) and combines v = v_u + w * (v_c - v_u) (w = 1: conditional only,
w = 0: unconditional only, w > 1: extrapolate towards the condition).

Solvers (:data:`SOLVERS`), N fixed steps of dt = 1/N from t_k = k/N:

- ``euler``: x += dt v(x, t_k) (N network evaluations, first order; the default);
- ``midpoint``: x += dt v(x + dt/2 v(x, t_k), t_k + dt/2) (2N evaluations, second order);
- ``heun``: v1 = v(x, t_k), v2 = v(x + dt v1, t_k + dt), x += dt (v1 + v2)/2 (2N, second order);
- ``rk4``: the classical Runge-Kutta step, k1 = v(x, t_k), k2 = v(x + dt/2 k1, t_k + dt/2),
  k3 = v(x + dt/2 k2, t_k + dt/2), k4 = v(x + dt k3, t_k + dt), x += dt (k1 + 2 k2 + 2 k3 + k4)/6
  (4N, fourth order; test_flow measures the orders).

``integrate`` also runs backwards in time (``t_start`` = 1, ``t_end`` = 0, dt < 0): the
observation density (``flow_policy_ros.policy.density``) integrates its augmented state
(x, log-det) from the data at t = 1 back to the noise at t = 0 with the same solver code.

Real-time chunking (training-time action conditioning, after Black et al. 2025, arXiv 2512.05964):
the first d actions of a chunk may be given (the commands already committed while inference
runs). Here the committed prefix is a CONDITIONING input of the velocity network, not part of
the flow state: the network sees the prefix rows (normalized actions, rows >= d zeroed) and the
per-row mask through ``VelocityNet.prefix_features`` (no biases, so d = 0 adds exactly nothing),
the flow still runs over the whole chunk (its K coefficients with a smooth basis), training takes
the prefix from the first d rows of the target chunk itself and the loss covers the whole chunk,
so the network learns to produce a chunk that passes through the prefix and continues it; the
sampler then writes the prefix into the output rows i < d exactly. CFG treats the prefix like
the arm's state: BOTH branches see it; only the guided condition (the goal) is replaced by the
null condition in the unconditional branch.

Why conditioning rather than inpainting the flow state (rows < d held at t = 1): inpainting
needs the state in action space, and a 32-row action-space flow trained that way left its
first rows un-denoised (per-row loss near Var(x0) = 1 on rows 0-4 with or without prefixes,
README "Real-time chunking under inference delay"). Conditioning works with any basis, so the
RTC model keeps the smooth B-spline chunk of the shipped models.

With a smooth chunk basis (``model.basis``, see ``flow_policy_ros.policy.basis``) all of the
above runs on the coefficients c = M^T x (B, K, A): data x1 and noise x0 are projected, and the
sampler decodes the final state, x = M c.

The regression baseline (``objective='regression'``) reuses all of this: the network maps
(x = 0, t = 0, c) straight to the chunk, which is exactly one Euler step of size 1 from
x0 = 0. So the same sampler (and the same exported graph) serves both objectives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from flow_policy_ros.policy.model import VelocityNet

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Point on the straight path: x_t = (1 - t) x0 + t x1; x0, x1 (B, H, A), t (B,)."""
    t = t.reshape(-1, *([1] * (x1.dim() - 1)))
    return (1.0 - t) * x0 + t * x1


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Velocity of the straight path, u = x1 - x0 (constant in t)."""
    return x1 - x0


def combine_guidance(v_cond: torch.Tensor, v_uncond: torch.Tensor, guidance_scale: torch.Tensor | float) -> torch.Tensor:
    """CFG combination v = v_u + w (v_c - v_u)."""
    return v_uncond + guidance_scale * (v_cond - v_uncond)


SOLVERS: tuple[str, ...] = ("euler", "midpoint", "heun", "rk4")


def check_solver(solver: str, steps: int) -> None:
    """ValueError naming the value unless ``solver`` is known and ``steps`` >= 1."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


def evaluation_times(solver: str, steps: int, t_start: float = 0.0, t_end: float = 1.0) -> list[float]:
    """The flow times at which ``integrate`` evaluates the velocity, in call order."""
    check_solver(solver, steps)
    dt = (t_end - t_start) / steps
    times = []
    for k in range(steps):
        t = t_start + k * dt
        times += {"euler": [t], "midpoint": [t, t + 0.5 * dt], "heun": [t, t + dt],
                  "rk4": [t, t + 0.5 * dt, t + 0.5 * dt, t + dt]}[solver]
    return times


def network_evaluations(solver: str, steps: int) -> int:
    """Velocity evaluations per sample (each one batched over both CFG branches)."""
    return len(evaluation_times(solver, steps))


def integrate(velocity: VelocityFn, x0: torch.Tensor, steps: int, solver: str = "euler",
              t_start: float = 0.0, t_end: float = 1.0) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from t_start to t_end (default 1) with ``steps`` fixed
    steps of ``solver``; t_end < t_start integrates backwards (dt < 0).

    ``velocity`` receives the state and a Python float t (see :func:`evaluation_times` for the
    order), so an exported graph sees each t as a constant and the loop unrolls (no Loop/If).
    """
    check_solver(solver, steps)
    dt = (t_end - t_start) / steps
    x = x0
    for k in range(steps):
        t = t_start + k * dt
        if solver == "euler":
            x = x + dt * velocity(x, t)
        elif solver == "midpoint":
            x = x + dt * velocity(x + (0.5 * dt) * velocity(x, t), t + 0.5 * dt)
        elif solver == "heun":
            v1 = velocity(x, t)
            v2 = velocity(x + dt * v1, t + dt)
            x = x + (0.5 * dt) * (v1 + v2)
        else:  # rk4
            k1 = velocity(x, t)
            k2 = velocity(x + (0.5 * dt) * k1, t + 0.5 * dt)
            k3 = velocity(x + (0.5 * dt) * k2, t + 0.5 * dt)
            k4 = velocity(x + dt * k3, t + dt)
            x = x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return x


def euler_integrate(velocity: VelocityFn, x0: torch.Tensor, steps: int, t_start: float = 0.0) -> torch.Tensor:
    """:func:`integrate` with the Euler solver: x += dt v(x, t_k), t_k = t_start + k dt."""
    return integrate(velocity, x0, steps, "euler", t_start)


def prefix_mask(prefix_length: torch.Tensor, horizon: int) -> torch.Tensor:
    """(B, H) float mask, 1 on the rows i < d of a committed prefix of length d = prefix_length (B,)."""
    rows = torch.arange(horizon, device=prefix_length.device)
    return (rows[None, :] < prefix_length.reshape(-1, 1)).to(torch.float32)


def sample_prefix_lengths(batch: int, max_delay: int, probability: float, weights: str,
                          generator: torch.Generator, device: torch.device | None = None) -> torch.Tensor:
    """Training delays d (B,) int64: with ``probability`` a d in [0, max_delay] drawn with ``weights``
    ('uniform', or 'exponential': P(d) proportional to exp(-d / max(1, max_delay / 3)) ), else 0."""
    if max_delay <= 0:
        return torch.zeros(batch, dtype=torch.int64, device=device)
    d = torch.arange(max_delay + 1, dtype=torch.float64)
    if weights == "uniform":
        p = torch.ones_like(d)
    elif weights == "exponential":
        p = torch.exp(-d / max(1.0, max_delay / 3.0))
    else:
        raise ValueError(f"rtc_delay_weights must be 'uniform' or 'exponential', got {weights!r}")
    gen_device = generator.device
    draws = torch.multinomial((p / p.sum()).to(torch.float32).to(gen_device), batch, replacement=True, generator=generator)
    use = torch.rand(batch, generator=generator, device=gen_device) < probability
    return torch.where(use, draws, torch.zeros_like(draws)).to(device)


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor
    dropped_fraction: float


def training_loss(
    model: VelocityNet,
    obs_n: torch.Tensor,
    x1: torch.Tensor,
    p_uncond: float,
    generator: torch.Generator,
    objective: str = "flow",
    prefix_length: torch.Tensor | None = None,
) -> LossOutput:
    """Loss on a batch: normalized observations (B, obs_dim) and chunks x1 (B, H, A).

    ``flow``: conditional flow matching, E ||v(x_t, t, c) - (x1 - x0)||^2 with t ~ U(0, 1).
    ``regression``: E ||v(0, 0, c) - x1||^2 (the deterministic baseline, see module doc).
    Both drop the guided condition with probability p_uncond. ``prefix_length`` (B,) int64
    (real-time chunking, only for a model built with ``rtc_max_delay`` > 0): the first d rows of
    the target chunk x1 are the network's prefix input (``VelocityNet.prefix_features``); the
    loss still covers the whole chunk (the network learns to pass through the prefix).
    """
    prefix_feat = None
    if prefix_length is not None:
        prefix_feat = model.prefix_features(x1, prefix_mask(prefix_length, x1.shape[1]).to(x1.device))
    x1 = model.encode(x1)  # (B, K, A); x1 itself without a basis
    batch = x1.shape[0]
    drop = torch.rand(batch, generator=generator, device=x1.device) < p_uncond
    cond = model.condition(obs_n, drop)
    if objective == "flow":
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
        t = torch.rand(batch, generator=generator, device=x1.device)
        x_t = interpolate(x0, x1, t)
        target = target_velocity(x0, x1)
    elif objective == "regression":
        x_t, t, target = torch.zeros_like(x1), torch.zeros(batch, device=x1.device), x1
    else:
        raise ValueError(f"training_loss: unknown objective {objective!r}")
    prediction = model(x_t, t, cond, prefix_feat)
    loss = torch.mean((prediction - target) ** 2)
    return LossOutput(loss, float(drop.float().mean()))


def step_times(steps: int) -> list[float]:
    """The Euler grid t_k = k / steps, k = 0 .. steps-1 (the times ``euler_integrate`` visits)."""
    return evaluation_times("euler", steps)


@torch.no_grad()
def step_time_features(model: VelocityNet, steps: int, solver: str = "euler") -> torch.Tensor:
    """``model.time_features`` at every evaluation time of ``solver``: (evaluations, width)."""
    t = torch.tensor(evaluation_times(solver, steps), dtype=model.null_condition.dtype)
    return model.time_features(t)


def sample_chunks(
    model: VelocityNet,
    obs_n: torch.Tensor,
    x0: torch.Tensor,
    guidance_scale: torch.Tensor | float,
    steps: int,
    time_features: torch.Tensor | None = None,
    solver: str = "euler",
    prefix: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample normalized chunks (B, H, A) from noise x0 (B, H, A) given obs_n (B, obs_dim).

    1. Condition features for both branches, once: [c_cond; c_uncond] (2B, width), and the
       committed prefix's features (if any), the same for both branches: both see it.
    2. Each velocity evaluation runs both branches in one batched call on [x; x] (2B, K*A).
    3. Combine with CFG; the solver takes the step; decode; the prefix rows are the prefix.

    ``time_features`` (evaluations, width), if given, are ``model.time_features`` precomputed at
    :func:`evaluation_times` (see ``step_time_features``); the exported graph stores them as
    constants. ``prefix`` (B, H, A) normalized actions and ``mask`` (B, H) (1 on committed rows):
    real-time chunking, for a model built with ``rtc_max_delay`` > 0.
    """
    x0 = model.encode(x0)  # noise -> coefficients (B, K, A): N(0, I) for an orthonormal basis
    batch, rows, action_dim = x0.shape  # rows: K rows of the flow state (H without a basis)
    flat = rows * action_dim
    cond = torch.cat([model.condition(obs_n), model.unconditional(obs_n)], dim=0)
    prefix_feat = None
    if mask is not None:
        feat = model.prefix_features(prefix, mask)
        prefix_feat = torch.cat([feat, feat], dim=0)
    calls = [0]

    # The state is kept flat (B, K*A) and both branches are split with constant-shape
    # reshapes, so an exported graph has no per-step shape arithmetic.
    def guided_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        t_const = torch.full((1,), t, dtype=x.dtype, device=x.device)  # broadcast over the batch
        time_feat = None if time_features is None else time_features[calls[0]][None, :]
        calls[0] += 1
        both = torch.cat([x, x], dim=0)
        v = model.velocity_flat(both, t_const, cond, time_feat, prefix_feat)
        v = v.reshape(2, -1, flat)
        return combine_guidance(v[0], v[1], guidance_scale)

    x1 = model.decode(integrate(guided_velocity, x0.reshape(-1, flat), steps, solver).reshape(-1, rows, action_dim))
    if mask is not None:
        x1 = torch.where(mask[:, :, None] > 0, prefix, x1)
    return x1
