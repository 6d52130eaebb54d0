"""The time convention, the Euler integrator and the CFG combination, against exact answers."""

from __future__ import annotations

import torch

from flow_policy_ros.policy.config import PolicyConfig
from flow_policy_ros.policy.flow import (
    combine_guidance,
    euler_integrate,
    interpolate,
    sample_chunks,
    step_time_features,
    step_times,
    target_velocity,
    training_loss,
)
from flow_policy_ros.policy.model import VelocityNet


def test_path_endpoints_follow_the_convention():
    """t = 0 is noise, t = 1 is data, and the target velocity moves x0 onto x1."""
    gen = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(4, 3, 2, generator=gen), torch.randn(4, 3, 2, generator=gen)
    assert torch.equal(interpolate(x0, x1, torch.zeros(4)), x0)
    assert torch.equal(interpolate(x0, x1, torch.ones(4)), x1)
    torch.testing.assert_close(x0 + target_velocity(x0, x1), x1)


def test_euler_is_exact_under_constant_velocity():
    x0 = torch.tensor([[0.5, -2.0]], dtype=torch.float64)
    velocity = torch.tensor([[1.25, 3.0]], dtype=torch.float64)
    for steps in (1, 3, 10):
        x1 = euler_integrate(lambda x, t: velocity, x0, steps)
        assert torch.allclose(x1, x0 + velocity, atol=1e-15, rtol=0)


def test_euler_visits_t_k_equals_k_over_n():
    visited = []
    euler_integrate(lambda x, t: visited.append(t) or torch.zeros_like(x), torch.zeros(1), 4)
    assert visited == [0.0, 0.25, 0.5, 0.75] == step_times(4)


def test_euler_on_linear_velocity_matches_the_riemann_sum():
    """dx/dt = t integrates by left Riemann sum: sum_k (k/N) / N = (N - 1) / (2N)."""
    n = 8
    x1 = euler_integrate(lambda x, t: torch.full_like(x, t), torch.zeros(1, dtype=torch.float64), n)
    assert abs(float(x1) - (n - 1) / (2 * n)) < 1e-15


def test_combine_guidance_semantics():
    v_c, v_u = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 4.0])
    assert torch.equal(combine_guidance(v_c, v_u, 1.0), v_c)
    assert torch.equal(combine_guidance(v_c, v_u, 0.0), v_u)
    torch.testing.assert_close(combine_guidance(v_c, v_u, 2.0), 2 * v_c - v_u)


def _net(seed: int = 0) -> tuple[VelocityNet, PolicyConfig]:
    cfg = PolicyConfig(hidden_dim=32, num_layers=2, horizon=4, euler_steps=5)
    torch.manual_seed(seed)
    net = VelocityNet(cfg).double()
    with torch.no_grad():
        net.output_proj.weight.normal_(0, 0.3)
        net.null_condition.normal_(0, 1.0)
    return net.eval(), cfg


def _plain_euler(net: VelocityNet, obs: torch.Tensor, x0: torch.Tensor, cond: torch.Tensor, steps: int) -> torch.Tensor:
    return euler_integrate(lambda x, t: net(x, torch.full((x.shape[0],), t, dtype=x.dtype), cond), x0, steps)


def test_batched_cfg_with_w1_is_the_conditional_branch_alone():
    net, cfg = _net()
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(3, cfg.obs_dim, generator=gen, dtype=torch.float64)
    x0 = torch.randn(3, cfg.horizon, cfg.action_dim, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        guided = sample_chunks(net, obs, x0, 1.0, cfg.euler_steps)
        conditional = _plain_euler(net, obs, x0, net.condition(obs), cfg.euler_steps)
    torch.testing.assert_close(guided, conditional, atol=1e-12, rtol=0)


def test_batched_cfg_with_w0_is_the_unconditional_branch_alone():
    net, cfg = _net()
    gen = torch.Generator().manual_seed(2)
    obs = torch.randn(3, cfg.obs_dim, generator=gen, dtype=torch.float64)
    x0 = torch.randn(3, cfg.horizon, cfg.action_dim, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        guided = sample_chunks(net, obs, x0, 0.0, cfg.euler_steps)
        unconditional = _plain_euler(net, obs, x0, net.unconditional(obs), cfg.euler_steps)
        conditional = _plain_euler(net, obs, x0, net.condition(obs), cfg.euler_steps)
    torch.testing.assert_close(guided, unconditional, atol=1e-12, rtol=0)
    assert not torch.allclose(unconditional, conditional), "the null condition must change the output"


def test_unconditional_branch_ignores_only_the_guided_fields():
    """The goal (guided) is nulled; the arm state is still seen by the unconditional branch."""
    net, cfg = _net()
    obs = torch.zeros(2, cfg.obs_dim, dtype=torch.float64)
    goal = cfg.observation.field_slices()["goal"]
    other_goal = obs.clone()
    other_goal[:, goal] = 5.0
    other_state = obs.clone()
    other_state[:, 0] = 5.0
    with torch.no_grad():
        assert torch.equal(net.unconditional(obs), net.unconditional(other_goal))
        assert not torch.allclose(net.unconditional(obs), net.unconditional(other_state))
        assert not torch.allclose(net.condition(obs), net.condition(other_goal))


def test_precomputed_time_features_give_the_same_samples():
    net, cfg = _net()
    gen = torch.Generator().manual_seed(3)
    obs = torch.randn(2, cfg.obs_dim, generator=gen, dtype=torch.float64)
    x0 = torch.randn(2, cfg.horizon, cfg.action_dim, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        plain = sample_chunks(net, obs, x0, 1.5, cfg.euler_steps)
        frozen = sample_chunks(net, obs, x0, 1.5, cfg.euler_steps, step_time_features(net, cfg.euler_steps))
    torch.testing.assert_close(plain, frozen, atol=1e-12, rtol=0)


def test_condition_dropout_rate_and_regression_objective():
    net, cfg = _net()
    net = net.float()
    gen = torch.Generator().manual_seed(4)
    obs = torch.randn(4000, cfg.obs_dim, generator=gen)
    x1 = torch.randn(4000, cfg.horizon, cfg.action_dim, generator=gen)
    out = training_loss(net, obs, x1, 0.1, gen)
    assert 0.08 < out.dropped_fraction < 0.12
    assert torch.isfinite(out.loss)
    assert training_loss(net, obs, x1, 0.0, gen).dropped_fraction == 0.0
    regression = training_loss(net, obs, x1, 0.1, gen, objective="regression")
    with torch.no_grad():  # regression loss = E || v(0, 0, c) - x1 ||^2 with some rows dropped
        assert float(regression.loss) > 0.5
