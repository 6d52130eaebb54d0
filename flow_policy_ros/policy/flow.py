"""Conditional flow matching: THE time convention, the loss, and the one Euler integrator.

Time convention (project-wide): t = 0 is noise x0 ~ N(0, I), t = 1 is data x1 (the
normalized action chunk). The straight path is x_t = (1 - t) * x0 + t * x1 with target
velocity u = x1 - x0, and sampling integrates dx/dt = v(x, t) from t = 0 to t = 1.
NOTE: this is the opposite of LeRobot's / openpi's pi0 convention (there t = 1 is noise and
the integration runs backwards); do not mix code from there without flipping t.

Classifier-free guidance: training replaces the guided condition by a learned null with
probability p_uncond; sampling evaluates the conditional and unconditional velocity in ONE
batched call (batch 2B) and combines v = v_u + w * (v_c - v_u) (w = 1: conditional only,
w = 0: unconditional only, w > 1: extrapolate towards the condition).

Euler: N fixed steps, dt = 1/N, t_k = k/N for k = 0 .. N-1.

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


def euler_integrate(velocity: VelocityFn, x0: torch.Tensor, steps: int, t_start: float = 0.0) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from t_start to 1 with ``steps`` fixed Euler steps.

    ``velocity`` receives the state and the Python float t_k = t_start + k * dt, so an
    exported graph sees each t_k as a constant.
    """
    if steps < 1:
        raise ValueError(f"euler_integrate: steps must be >= 1, got {steps}")
    dt = (1.0 - t_start) / steps
    x = x0
    for k in range(steps):
        x = x + dt * velocity(x, t_start + k * dt)
    return x


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
) -> LossOutput:
    """Loss on a batch: normalized observations (B, obs_dim) and chunks x1 (B, H, A).

    ``flow``: conditional flow matching, E ||v(x_t, t, c) - (x1 - x0)||^2 with t ~ U(0, 1).
    ``regression``: E ||v(0, 0, c) - x1||^2 (the deterministic baseline, see module doc).
    Both drop the guided condition with probability p_uncond.
    """
    batch = x1.shape[0]
    drop = torch.rand(batch, generator=generator, device=x1.device) < p_uncond
    cond = model.condition(obs_n, drop)
    if objective == "flow":
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
        t = torch.rand(batch, generator=generator, device=x1.device)
        prediction = model(interpolate(x0, x1, t), t, cond)
        target = target_velocity(x0, x1)
    elif objective == "regression":
        prediction = model(torch.zeros_like(x1), torch.zeros(batch, device=x1.device), cond)
        target = x1
    else:
        raise ValueError(f"training_loss: unknown objective {objective!r}")
    loss = torch.mean((prediction - target) ** 2)
    return LossOutput(loss, float(drop.float().mean()))


def step_times(steps: int) -> list[float]:
    """The Euler grid t_k = k / steps, k = 0 .. steps-1 (the times ``euler_integrate`` visits)."""
    return [k / steps for k in range(steps)]


@torch.no_grad()
def step_time_features(model: VelocityNet, steps: int) -> torch.Tensor:
    """``model.time_features`` at every Euler time: (steps, width)."""
    t = torch.tensor(step_times(steps), dtype=model.null_condition.dtype)
    return model.time_features(t)


def sample_chunks(
    model: VelocityNet,
    obs_n: torch.Tensor,
    x0: torch.Tensor,
    guidance_scale: torch.Tensor | float,
    steps: int,
    time_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample normalized chunks (B, H, A) from noise x0 (B, H, A) given obs_n (B, obs_dim).

    1. Condition features for both branches, once: [c_cond; c_uncond] (2B, width).
    2. Each Euler step evaluates both branches in one batched call on [x; x] (2B, H, A).
    3. Combine with CFG and take the Euler step.

    ``time_features`` (steps, width), if given, are ``model.time_features(t_k)`` precomputed
    for t_k = k/steps (see ``step_time_features``); the exported graph stores them as constants.
    """
    batch, horizon, action_dim = x0.shape
    cond = torch.cat([model.condition(obs_n), model.unconditional(obs_n)], dim=0)

    # The state is kept flat (B, H*A) and both branches are split with constant-shape
    # reshapes, so an exported graph has no per-step shape arithmetic.
    def guided_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        t_const = torch.full((1,), t, dtype=x.dtype, device=x.device)  # broadcast over the batch
        time_feat = None if time_features is None else time_features[round(t * steps)][None, :]
        v = model.velocity_flat(torch.cat([x, x], dim=0), t_const, cond, time_feat).reshape(2, -1, horizon * action_dim)
        return combine_guidance(v[0], v[1], guidance_scale)

    x1 = euler_integrate(guided_velocity, x0.reshape(-1, horizon * action_dim), steps)
    return x1.reshape(-1, horizon, action_dim)
