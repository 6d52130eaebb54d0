"""The time convention, the Euler integrator and the CFG combination, against exact answers."""

from __future__ import annotations

import pytest
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
    cfg = PolicyConfig(hidden_dim=32, num_layers=2, horizon=4, solver_steps=5)
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
        guided = sample_chunks(net, obs, x0, 1.0, cfg.solver_steps)
        conditional = _plain_euler(net, obs, x0, net.condition(obs), cfg.solver_steps)
    torch.testing.assert_close(guided, conditional, atol=1e-12, rtol=0)


def test_batched_cfg_with_w0_is_the_unconditional_branch_alone():
    net, cfg = _net()
    gen = torch.Generator().manual_seed(2)
    obs = torch.randn(3, cfg.obs_dim, generator=gen, dtype=torch.float64)
    x0 = torch.randn(3, cfg.horizon, cfg.action_dim, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        guided = sample_chunks(net, obs, x0, 0.0, cfg.solver_steps)
        unconditional = _plain_euler(net, obs, x0, net.unconditional(obs), cfg.solver_steps)
        conditional = _plain_euler(net, obs, x0, net.condition(obs), cfg.solver_steps)
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
        plain = sample_chunks(net, obs, x0, 1.5, cfg.solver_steps)
        frozen = sample_chunks(net, obs, x0, 1.5, cfg.solver_steps, step_time_features(net, cfg.solver_steps))
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


# --------------------------------------------------------------------------- solvers


def test_solvers_visit_their_evaluation_times():
    from flow_policy_ros.policy.flow import evaluation_times, integrate, network_evaluations

    for solver, expected in (("euler", [0.0, 0.5]), ("midpoint", [0.0, 0.25, 0.5, 0.75]), ("heun", [0.0, 0.5, 0.5, 1.0]),
                             ("rk4", [0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0])):
        visited = []
        integrate(lambda x, t, v=visited: v.append(t) or torch.zeros_like(x), torch.zeros(1), 2, solver)
        assert visited == expected == evaluation_times(solver, 2)
        assert network_evaluations(solver, 2) == len(expected)


def test_second_order_solvers_are_exact_for_velocity_linear_in_t():
    """dx/dt = a + b t integrates to a + b/2 exactly with midpoint and Heun (any N), not with Euler."""
    from flow_policy_ros.policy.flow import integrate

    a, b = 0.7, -1.3
    exact = a + b / 2
    for n in (1, 3, 8):
        for solver in ("midpoint", "heun"):
            x1 = integrate(lambda x, t: torch.full_like(x, a + b * t), torch.zeros(1, dtype=torch.float64), n, solver)
            assert abs(float(x1) - exact) < 1e-14, (solver, n)
        euler = integrate(lambda x, t: torch.full_like(x, a + b * t), torch.zeros(1, dtype=torch.float64), n, "euler")
        assert abs(float(euler) - (a + b * (n - 1) / (2 * n))) < 1e-14  # the left Riemann sum


def test_solver_orders_on_a_linear_ode():
    """dx/dt = x from x0 = 1: x(1) = e. Euler's error halves with N (order 1); midpoint's and Heun's drop 4x (order 2)."""
    import math

    from flow_policy_ros.policy.flow import integrate

    def error(solver: str, n: int) -> float:
        return abs(float(integrate(lambda x, t: x, torch.ones(1, dtype=torch.float64), n, solver)) - math.e)

    assert 1.8 < error("euler", 16) / error("euler", 32) < 2.2
    for solver in ("midpoint", "heun"):
        assert 3.7 < error(solver, 16) / error(solver, 32) < 4.3
        assert error(solver, 16) < error("euler", 16) / 10


def test_rk4_is_exact_for_velocity_cubic_in_t():
    """dx/dt = a + b t + c t^2 + d t^3: RK4 reduces to Simpson's rule, exact for cubics (any N)."""
    from flow_policy_ros.policy.flow import integrate

    a, b, c, d = 0.7, -1.3, 2.1, -0.9
    exact = a + b / 2 + c / 3 + d / 4
    for n in (1, 3, 8):
        x1 = integrate(lambda x, t: torch.full_like(x, a + b * t + c * t**2 + d * t**3), torch.zeros(1, dtype=torch.float64), n, "rk4")
        assert abs(float(x1) - exact) < 1e-14, n
    heun = integrate(lambda x, t: torch.full_like(x, a + b * t + c * t**2 + d * t**3), torch.zeros(1, dtype=torch.float64), 3, "heun")
    assert abs(float(heun) - exact) > 1e-3  # the trapezoid rule is not


def _order_errors(solver: str, steps: tuple[int, ...]) -> list[float]:
    """|x(1) - 1/2| for dx/dt = -2 t x^2, x(0) = 1 (exact x(t) = 1 / (1 + t^2)): nonlinear in x and
    time-dependent, so a solver that evaluated at the wrong times would lose its order."""
    from flow_policy_ros.policy.flow import integrate

    return [abs(float(integrate(lambda x, t: -2.0 * t * x * x, torch.ones(1, dtype=torch.float64), n, solver)) - 0.5)
            for n in steps]


def test_measured_orders_on_a_nonlinear_time_dependent_ode():
    """Error ratio when halving the step: ~2 (Euler), ~4 (midpoint, Heun), ~16 (RK4)."""
    expected = {"euler": 2.0, "midpoint": 4.0, "heun": 4.0, "rk4": 16.0}
    for solver, ratio in expected.items():
        errors = _order_errors(solver, (16, 32, 64))  # asymptotic regime: at N = 4..8 RK4 gives 10-14
        for coarse, fine in zip(errors, errors[1:]):
            assert 0.85 * ratio < coarse / fine < 1.15 * ratio, (solver, errors)
    assert _order_errors("rk4", (8,))[0] < _order_errors("heun", (8,))[0] / 100


def test_backward_integration_returns_to_the_start():
    """integrate from t = 1 back to t = 0 (dt < 0) undoes the forward pass, to the solver's accuracy."""
    import math

    from flow_policy_ros.policy.flow import evaluation_times, integrate

    def field(x, t):
        return math.sin(3.0 * t) - 0.5 * x

    start = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    for solver, tol in (("euler", 1e-1), ("heun", 1e-3), ("rk4", 1e-8)):
        end = integrate(field, start, 32, solver)
        back = integrate(field, end, 32, solver, t_start=1.0, t_end=0.0)
        assert float((back - start).abs().max()) < tol, solver
    assert evaluation_times("rk4", 2, t_start=1.0, t_end=0.0) == [1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25, 0.0]


def test_unknown_solver_is_refused():
    import pytest

    from flow_policy_ros.policy.flow import integrate

    with pytest.raises(ValueError, match="solver must be one of"):
        integrate(lambda x, t: x, torch.zeros(1), 2, "dopri5")


def test_frozen_time_features_match_for_every_solver():
    cfg, net = _rtc_net(0)[1], _rtc_net(0)[0]
    gen = torch.Generator().manual_seed(1)
    obs, x0 = torch.randn(3, cfg.obs_dim, generator=gen), torch.randn(3, cfg.horizon, cfg.action_dim, generator=gen)
    for solver in ("euler", "midpoint", "heun", "rk4"):
        with torch.no_grad():
            plain = sample_chunks(net, obs, x0, 1.5, 3, None, solver)
            frozen = sample_chunks(net, obs, x0, 1.5, 3, step_time_features(net, 3, solver), solver)
        torch.testing.assert_close(plain, frozen, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- real-time chunking


def _rtc_net(seed: int, d_max: int = 3, basis: str = "none") -> tuple[VelocityNet, PolicyConfig]:
    cfg = PolicyConfig(hidden_dim=32, num_layers=2, horizon=6, solver_steps=4, rtc_max_delay=d_max,
                       chunk_basis=basis, basis_size=4 if basis != "none" else 0)
    torch.manual_seed(seed)
    net = VelocityNet(cfg)
    with torch.no_grad():
        net.output_proj.weight.normal_(0.0, 0.3)
    return net, cfg


@pytest.mark.parametrize("basis", ["none", "bspline"])
def test_sampler_keeps_the_prefix_exactly_and_both_branches_see_it(basis):
    from flow_policy_ros.policy.flow import prefix_mask

    net, cfg = _rtc_net(0, basis=basis)
    gen = torch.Generator().manual_seed(2)
    obs, x0 = torch.randn(4, cfg.obs_dim, generator=gen), torch.randn(4, cfg.horizon, cfg.action_dim, generator=gen)
    prefix = torch.randn(4, cfg.horizon, cfg.action_dim, generator=gen)
    lengths = torch.tensor([0, 1, 2, 3])
    mask = prefix_mask(lengths, cfg.horizon)
    assert mask.tolist()[2] == [1, 1, 0, 0, 0, 0]
    with torch.no_grad():
        out = sample_chunks(net, obs, x0, 2.0, 4, None, "heun", prefix, mask)
        plain = sample_chunks(net, obs, x0, 2.0, 4, None, "heun", prefix, prefix_mask(torch.zeros(4, dtype=torch.int64), 6))
        no_prefix = sample_chunks(net, obs, x0, 2.0, 4, None, "heun")
    for b, d in enumerate(lengths.tolist()):
        assert torch.equal(out[b, :d], prefix[b, :d])
    assert torch.equal(out[0], plain[0])  # d = 0 is plain sampling ...
    torch.testing.assert_close(plain, no_prefix, rtol=0, atol=1e-6)  # ... whatever the ignored prefix rows hold
    assert not torch.allclose(out[3, 3:], plain[3, 3:])  # the prefix changes what follows it
    # the prefix is part of the state: with w = 0 (unconditional) it still shapes the chunk
    with torch.no_grad():
        uncond = sample_chunks(net, obs, x0, 0.0, 4, None, "euler", prefix, mask)
        uncond_plain = sample_chunks(net, obs, x0, 0.0, 4, None, "euler", prefix, prefix_mask(torch.zeros(4, dtype=torch.int64), 6))
    assert not torch.allclose(uncond[3, 3:], uncond_plain[3, 3:])


def test_prefix_rows_beyond_d_are_ignored():
    from flow_policy_ros.policy.flow import prefix_mask

    net, cfg = _rtc_net(4, basis="bspline")
    gen = torch.Generator().manual_seed(5)
    obs, x0 = torch.randn(2, cfg.obs_dim, generator=gen), torch.randn(2, cfg.horizon, cfg.action_dim, generator=gen)
    prefix = torch.randn(2, cfg.horizon, cfg.action_dim, generator=gen)
    other = prefix.clone()
    other[:, 2:] += 3.0  # rows >= d = 2 differ
    mask = prefix_mask(torch.tensor([2, 2]), cfg.horizon)
    with torch.no_grad():
        a = sample_chunks(net, obs, x0, 1.0, 4, None, "euler", prefix, mask)
        b = sample_chunks(net, obs, x0, 1.0, 4, None, "euler", other, mask)
    assert torch.equal(a, b)


@pytest.mark.parametrize("basis", ["none", "bspline"])
def test_rtc_loss_is_the_flow_loss_on_the_whole_chunk_with_the_prefix_as_input(basis):
    """The first d rows of the target are the network's prefix input; the loss covers every row."""
    from flow_policy_ros.policy.flow import prefix_mask

    net, cfg = _rtc_net(1, basis=basis)
    gen = torch.Generator().manual_seed(3)
    obs, actions = torch.randn(8, cfg.obs_dim, generator=gen), torch.randn(8, cfg.horizon, cfg.action_dim, generator=gen)
    lengths = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    loss = training_loss(net, obs, actions, 0.0, torch.Generator().manual_seed(9), "flow", lengths).loss
    # the same random draws by hand: drop, x0, t (training_loss draws them in this order)
    g = torch.Generator().manual_seed(9)
    torch.rand(8, generator=g)
    x1 = net.encode(actions)
    x0, t = torch.randn(x1.shape, generator=g), torch.rand(8, generator=g)
    feat = net.prefix_features(actions, prefix_mask(lengths, cfg.horizon))
    pred = net(interpolate(x0, x1, t), t, net.condition(obs), feat)
    torch.testing.assert_close(loss, torch.mean((pred - (x1 - x0)) ** 2))
    # d = 0 everywhere is exactly the plain loss
    zero = torch.zeros(8, dtype=torch.int64)
    torch.testing.assert_close(training_loss(net, obs, actions, 0.0, torch.Generator().manual_seed(9), "flow", zero).loss,
                               training_loss(net, obs, actions, 0.0, torch.Generator().manual_seed(9), "flow").loss)


def test_prefix_lengths_follow_the_configured_weights():
    from flow_policy_ros.policy.flow import sample_prefix_lengths

    gen = torch.Generator().manual_seed(0)
    d = sample_prefix_lengths(20000, 6, 1.0, "uniform", gen)
    counts = torch.bincount(d, minlength=7).double() / 20000
    assert torch.all((counts - 1 / 7).abs() < 0.02)
    d = sample_prefix_lengths(20000, 6, 1.0, "exponential", gen)
    counts = torch.bincount(d, minlength=7)
    assert torch.all(counts[:-1] > counts[1:])  # decaying
    d = sample_prefix_lengths(20000, 6, 0.25, "uniform", gen)
    assert abs(float((d > 0).double().mean()) - 0.25 * 6 / 7) < 0.02
    assert torch.equal(sample_prefix_lengths(5, 0, 1.0, "uniform", gen), torch.zeros(5, dtype=torch.int64))


def test_plain_network_refuses_a_prefix_mask():
    import pytest

    net, cfg = _net()
    with pytest.raises(ValueError, match="not trained for real-time chunking"):
        net.velocity_flat(torch.zeros(1, cfg.horizon * cfg.action_dim), torch.zeros(1), torch.zeros(1, 32), None,
                          torch.zeros(1, 32))
    with pytest.raises(ValueError, match="not trained for real-time chunking"):
        net.prefix_features(torch.zeros(1, cfg.horizon, cfg.action_dim), torch.zeros(1, cfg.horizon))
