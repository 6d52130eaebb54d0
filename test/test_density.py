"""The observation density (policy/density.py): divergence, sign convention, closed-form Gaussian,
a trained model, and the exportable log-likelihood graph."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch

from flow_policy_ros.policy.density import (
    DensityConfig,
    DensityVelocityNet,
    GaussianFlowField,
    ObservationDensity,
    ObservationLogLikelihood,
    log_likelihood,
    observation_normalization,
    train_density,
)


def _random_net(cfg: DensityConfig, seed: int = 0) -> DensityVelocityNet:
    torch.manual_seed(seed)
    return DensityVelocityNet(cfg).double()


def _autograd_jacobians(net: DensityVelocityNet, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B, D, D) Jacobians, [b, j, i] = d v_j / d y_i, by torch.autograd (the reference)."""
    return torch.stack([
        torch.autograd.functional.jacobian(lambda row, k=k: net(row[None], t[k:k + 1])[0], y[k]) for k in range(len(y))
    ])


def _gaussian(dim: int, low: float, high: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """mu (D,), Sigma (D, D) float64 with eigenvalues log-spaced in [low, high] and a random rotation."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    lam = torch.logspace(math.log10(low), math.log10(high), dim, dtype=torch.float64)
    mu = torch.randn(dim, generator=gen, dtype=torch.float64) * 0.5
    return mu, (q * lam) @ q.t()


# --------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("num_layers,activation", [(3, "silu"), (0, "silu"), (2, "softplus"), (0, "softplus")])
def test_exact_divergence_is_the_autograd_jacobian_trace(num_layers, activation):
    """0 layers: the one-hidden-layer trace s . c fast path."""
    cfg = DensityConfig(obs_dim=6, hidden_dim=24, num_layers=num_layers, activation=activation)
    net = _random_net(cfg, seed=1)
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(5, 6, generator=gen, dtype=torch.float64) * 1.5
    t = torch.rand(5, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        velocity, divergence = net.velocity_and_divergence(y, t)
    jacobians = _autograd_jacobians(net, y, t)
    reference = torch.diagonal(jacobians, dim1=1, dim2=2).sum(dim=1)
    assert float((divergence - reference).abs().max()) < 1e-10
    assert float((velocity - net(y, t).detach()).abs().max()) < 1e-12
    assert float(reference.abs().max()) > 0.1  # a non-trivial field: the trace is not ~0
    assert float(jacobians.abs().mean()) > 1e-2


def test_hutchinson_estimate_is_unbiased_with_fixed_probes():
    """Rademacher probes drawn once at construction: w sum_p p^T J p; over many probes the estimate
    matches the exact trace within 4 standard errors of the per-probe spread."""
    probes = 4000
    hutch = _random_net(DensityConfig(obs_dim=6, hidden_dim=24, divergence="hutchinson", probes=probes, probe_seed=3), seed=1)
    assert set(torch.unique(hutch.probes).tolist()) == {-1.0, 1.0} and hutch.probes.shape == (probes, 6)
    again = DensityVelocityNet(DensityConfig(obs_dim=6, hidden_dim=24, divergence="hutchinson", probes=probes, probe_seed=3))
    assert torch.equal(again.probes.double(), hutch.probes)  # fixed by the seed, not redrawn
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    with torch.no_grad():
        _, estimate = hutch.velocity_and_divergence(y, t)
    jacobians = _autograd_jacobians(hutch, y, t)
    exact = torch.diagonal(jacobians, dim1=1, dim2=2).sum(dim=1)
    per_probe = torch.einsum("pi,bij,pj->bp", hutch.probes, jacobians, hutch.probes)  # p^T J p
    assert float((estimate - per_probe.mean(dim=1)).abs().max()) < 1e-10
    stderr = per_probe.std(dim=1) / math.sqrt(probes)
    assert bool(torch.all((estimate - exact).abs() < 4 * stderr)), (estimate, exact, stderr)
    assert float(per_probe.std(dim=1).min()) > 0.05 * float(exact.abs().max())  # single probes really are noisy


def test_config_is_validated():
    with pytest.raises(ValueError, match="divergence must be one of"):
        DensityConfig(obs_dim=3, divergence="trace")
    with pytest.raises(ValueError, match="obs_dim must be >= 1"):
        DensityConfig(obs_dim=0)


# --------------------------------------------------------------------------- closed form


def test_log_likelihood_of_the_analytic_gaussian_field_is_the_gaussian_log_density():
    """Data N(mu, Sigma) (D = 17, eigenvalues 0.25..1): the optimal flow-matching field is affine in y
    (GaussianFlowField); integrating it back from t = 1 with RK4, 16 steps, gives log N(y; mu, Sigma) to 1e-3."""
    mu, sigma = _gaussian(17, 0.25, 1.0)
    field = GaussianFlowField(mu, sigma)
    y = torch.distributions.MultivariateNormal(mu, sigma).sample((64,))
    y = torch.cat([y, mu[None] + 3.0 * torch.linalg.cholesky(sigma)[:, 0][None]])  # and a tail point
    exact = field.log_prob(y)
    error = (log_likelihood(field, y, 16, "rk4") - exact).abs().max()
    assert float(error) < 1e-3
    # the opposite sign of the divergence term (a classic slip) is off by far more
    flipped = log_likelihood(lambda x, t: (field(x, t)[0], -field(x, t)[1]), y, 16, "rk4")
    assert float((flipped - exact).abs().min()) > 1.0


def test_solver_orders_on_the_gaussian_log_likelihood():
    """Error ratio per halving of the step on the closed-form case: ~4 for midpoint/Heun, ~16 for RK4."""
    mu, sigma = _gaussian(5, 0.25, 1.0, seed=1)
    field = GaussianFlowField(mu, sigma)
    y = torch.distributions.MultivariateNormal(mu, sigma).sample((16,))
    exact = field.log_prob(y)

    def error(solver: str, steps: int) -> float:
        return float((log_likelihood(field, y, steps, solver) - exact).abs().max())

    # measured (N = 64 -> 128 -> 256): Euler 1.96, 1.98; midpoint and Heun 4.13, 4.06; RK4 17.4, 16.7
    for solver, low, high in (("euler", 1.8, 2.2), ("midpoint", 3.6, 4.5), ("heun", 3.6, 4.5), ("rk4", 14.0, 19.0)):
        ratios = [error(solver, n) / error(solver, 2 * n) for n in (64, 128)]
        assert all(low < r < high for r in ratios), (solver, ratios)


def test_raw_log_prob_includes_the_normalization_log_det():
    """A zero velocity field carries N(0, I) to itself, so in raw units the density is exactly
    N(shift, diag(scale^2)): the - sum log scale term and its sign are checked to 1e-10."""
    shift, scale = np.array([0.5, -1.0, 2.0]), np.array([0.1, 2.0, 0.03])
    density = ObservationDensity(DensityConfig(obs_dim=3, hidden_dim=8), shift, scale).double().requires_grad_(False)
    torch.nn.init.zeros_(density.net.output_proj.weight)
    torch.nn.init.zeros_(density.net.output_proj.bias)
    x = torch.tensor([[0.5, -1.0, 2.0], [0.7, 1.0, 1.95]], dtype=torch.float64)
    reference = torch.distributions.Normal(torch.tensor(shift), torch.tensor(scale)).log_prob(x).sum(dim=1)
    for solver in ("euler", "rk4"):
        assert float((density.log_prob(x, 3, solver) - reference).abs().max()) < 1e-6  # float32 log-det buffer
    assert float(density.log_det_normalization) == pytest.approx(-np.log(scale).sum(), rel=1e-7)


# --------------------------------------------------------------------------- trained models


def _auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties count half."""
    diff = positive[:, None] - negative[None, :]
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def test_trained_density_ranks_in_distribution_above_in_range_off_manifold_points():
    """Two joints that move together (two clusters on the diagonal): points inside every joint's
    training range but off the diagonal, which a per-dimension range guard passes, score lower."""
    rng = np.random.default_rng(0)

    def sample(n: int) -> np.ndarray:
        centre = rng.choice([-0.6, 0.6], size=(n, 1))
        along = rng.normal(0.0, 0.25, size=(n, 1))
        return np.hstack([centre + along, centre + along]) + rng.normal(0.0, 0.04, size=(n, 2)) + np.array([0.3, -1.1])

    train = sample(3000)
    trained = train_density(train, steps=500, seed=0)
    inside, off = sample(300), np.array([0.3, -1.1]) + rng.uniform(-0.8, 0.8, size=(300, 2)) * np.array([1.0, -1.0])
    off = off[np.abs((off[:, 0] - 0.3) - (off[:, 1] + 1.1)) > 0.2]  # joints >= 0.2 rad apart: 3.5 sd of the data
    low, high = train.min(axis=0), train.max(axis=0)
    assert len(off) > 100 and np.all((off >= low) & (off <= high))  # the range guard passes all of them
    with torch.no_grad():
        score_in = trained.model.log_prob(torch.tensor(inside, dtype=torch.float32), 8, "rk4").numpy()
        score_off = trained.model.log_prob(torch.tensor(off, dtype=torch.float32), 8, "rk4").numpy()
    assert _auroc(score_in, score_off) > 0.97
    assert np.all(np.isfinite(score_in)) and np.all(np.isfinite(score_off))


MU, STD = np.array([0.3, -1.2, 2.0]), np.array([0.2, 0.5, 0.05])
COV = np.array([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]]) * np.outer(STD, STD)


@pytest.fixture(scope="module")
def gaussian_density():
    """A density trained 600 steps on a correlated 3-D Gaussian in raw units of very different
    scales (so the normalization's log-det matters), and 400 held-out points."""
    rng = np.random.default_rng(1)
    trained = train_density(rng.multivariate_normal(MU, COV, size=4000), steps=600, seed=0)
    return trained, rng.multivariate_normal(MU, COV, size=400)


def test_trained_density_of_a_gaussian_is_close_to_the_exact_log_density(gaussian_density):
    """log p on held-out points within 0.2 nats on average of the exact log-density, unbiased."""
    trained, held_out = gaussian_density
    assert np.mean(trained.losses[-50:]) < np.mean(trained.losses[:50])
    model = copy.deepcopy(trained.model).double()
    with torch.no_grad():
        score = model.log_prob(torch.tensor(held_out), 16, "rk4").numpy()
    exact = torch.distributions.MultivariateNormal(torch.tensor(MU), torch.tensor(COV)).log_prob(torch.tensor(held_out)).numpy()
    error = score - exact
    assert abs(error.mean()) < 0.05 and np.abs(error).mean() < 0.2, (error.mean(), np.abs(error).mean())
    assert np.corrcoef(score, exact)[0, 1] > 0.95
    # and it generates the data: forward from noise, the sample mean is the data mean (in std units)
    with torch.no_grad():
        samples = model.sample(torch.randn(2000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 8).numpy()
    assert np.all(np.abs(samples.mean(axis=0) - MU) < 0.1 * STD)


def test_frozen_time_features_give_the_same_log_likelihood(gaussian_density):
    """The export freezes the time MLP's output per stage time: same scores as computing it."""
    density = copy.deepcopy(gaussian_density[0].model)
    y = torch.randn(4, density.net.cfg.obs_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = density.log_prob_normalized(y, 4, "rk4")
        density.net.freeze_time_features([1.0 - j / 8 for j in range(9)])
        after = density.log_prob_normalized(y, 4, "rk4")
    assert len(density.net._frozen_time) == 9
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_trained_field_is_smooth_enough_for_rk4_with_8_steps(gaussian_density):
    """The shipped default (RK4 x 8, docs/density_solvers.md) is within 1e-2 nat of RK4 x 64 on the
    trained model; the density's low-frequency time features are what makes this hold."""
    trained, held_out = gaussian_density
    model = copy.deepcopy(trained.model).double()
    y = model.normalize(torch.tensor(held_out))
    with torch.no_grad():
        fine = log_likelihood(model.field, y, 64, "rk4")
        assert float((log_likelihood(model.field, y, 8, "rk4") - fine).abs().max()) < 1e-2
        assert float((log_likelihood(model.field, y, 8, "euler") - fine).abs().max()) > 0.1


def test_data_noise_learns_the_smoothed_density_of_near_degenerate_data():
    """Two joints that move together to 1 mrad (a near-degenerate direction): with data_noise = 0.1
    the model learns the data convolved with N(0, 0.1^2) in normalized units, i.e. in raw units
    N(mu, Sigma + diag((0.1 scale)^2)), whose log-density is known."""
    rng = np.random.default_rng(4)
    along = rng.normal(0.0, 0.4, size=(4000, 1))
    data = np.array([0.2, -0.5]) + np.hstack([along, along]) + rng.normal(0.0, 1e-3, size=(4000, 2))
    trained = train_density(data, steps=600, data_noise=0.1, seed=0)
    smoothed = np.cov(data.T) + np.diag((0.1 * trained.obs_scale) ** 2)
    held_out = rng.multivariate_normal(data.mean(axis=0), smoothed, size=300)
    with torch.no_grad():
        score = copy.deepcopy(trained.model).double().log_prob(torch.tensor(held_out), 8, "rk4").numpy()
    exact = torch.distributions.MultivariateNormal(torch.tensor(data.mean(axis=0)), torch.tensor(smoothed)).log_prob(
        torch.tensor(held_out)).numpy()
    assert np.abs(score - exact).mean() < 0.2, np.abs(score - exact).mean()
    with pytest.raises(ValueError, match="data_noise must be >= 0"):
        train_density(data, steps=1, data_noise=-0.1)


def test_train_density_uses_the_policy_statistics_when_given():
    from flow_policy_ros.policy.normalization import NormalizationStats

    rng = np.random.default_rng(2)
    obs = rng.normal(size=(200, 4))
    stats = NormalizationStats.fit(obs, rng.normal(size=(200, 3, 2)), "meanstd")
    trained = train_density(obs, stats=stats, steps=2)
    np.testing.assert_array_equal(trained.obs_shift, stats.obs_shift)
    np.testing.assert_allclose(trained.model.obs_scale.numpy(), stats.obs_scale, rtol=1e-6)
    shift, scale = observation_normalization(obs, "minmax")
    np.testing.assert_allclose(shift + scale, obs.max(axis=0))
    with pytest.raises(ValueError, match="expected finite observations"):
        train_density(np.array([[0.0, np.nan], [1.0, 2.0]]), steps=1)


def test_density_round_trips_through_a_saved_dict_exactly(tmp_path, gaussian_density):
    trained, held_out = gaussian_density
    torch.save(trained.model.to_dict(), tmp_path / "density.pt")
    loaded = ObservationDensity.from_dict(torch.load(tmp_path / "density.pt", weights_only=True)).eval()
    x = torch.tensor(held_out[:16], dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x), trained.model.log_prob(x))
    np.testing.assert_array_equal(loaded.to_dict()["obs_scale"], trained.obs_scale)  # float64, not via float32
    with pytest.raises(ValueError, match=r"density: missing \['state'\]"):
        ObservationDensity.from_dict({k: v for k, v in trained.model.to_dict().items() if k != "state"})


# --------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_log_likelihood_exports_to_onnx_without_control_flow(tmp_path, divergence):
    """The log-likelihood alone, traced like the policy (TorchScript exporter, opset 17): no
    Loop/If/Scan, full checker, ONNX Runtime within 1e-4 relative of PyTorch."""
    import onnx
    import onnxruntime as ort

    rng = np.random.default_rng(3)
    obs = rng.normal(size=(500, 7)) * rng.uniform(0.05, 2.0, size=7) + rng.normal(size=7)
    cfg = DensityConfig(obs_dim=7, hidden_dim=32, divergence=divergence, probes=4)
    graph = ObservationLogLikelihood(train_density(obs, cfg, steps=50).model, steps=4, solver="rk4").eval()
    path = tmp_path / "density.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (torch.zeros(1, 7),), str(path), input_names=["observation"],
                          output_names=["observation_log_likelihood"],
                          dynamic_axes={"observation": {0: "batch"}, "observation_log_likelihood": {0: "batch"}},
                          opset_version=17, do_constant_folding=True, dynamo=False)
    model = onnx.load(str(path))
    assert not {node.op_type for node in model.graph.node} & {"Loop", "If", "Scan"}
    onnx.checker.check_model(str(path), full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for batch in (1, 8):
        x = obs[rng.integers(0, len(obs), batch)].astype(np.float32) + rng.normal(0, 0.3, size=(batch, 7)).astype(np.float32)
        (onnx_out,) = session.run(None, {"observation": x})
        with torch.no_grad():
            torch_out = graph(torch.from_numpy(x)).numpy()
        assert onnx_out.shape == (batch,) and onnx_out.dtype == np.float32
        assert np.max(np.abs(onnx_out - torch_out) / np.maximum(np.abs(torch_out), 1.0)) <= 1e-4


@pytest.mark.parametrize("solver,steps,activation", [("rk4", 2, "silu"), ("midpoint", 3, "silu"), ("euler", 4, "softplus"),
                                                     ("heun", 2, "silu"), ("rk4", 3, "softplus")])
def test_one_layer_path_equals_the_augmented_integration(solver, steps, activation):
    """The one-hidden-layer fast path (y integrated alone, the divergence integral as one product with the
    solver's quadrature weights) gives the augmented integration's value, in float64."""
    from flow_policy_ros.policy.density import quadrature_weights

    torch.manual_seed(0)
    density = ObservationDensity(DensityConfig(obs_dim=5, hidden_dim=32, num_layers=0, activation=activation),
                                 np.zeros(5), np.ones(5)).double()
    with torch.no_grad():
        for p in density.net.parameters():
            p.normal_(0.0, 0.5)
    y = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        fast = density.log_prob_normalized(y, steps, solver)
        reference = log_likelihood(density.field, y, steps, solver)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-10)
    assert float((fast - reference).abs().max()) < 1e-10 and float(reference.std()) > 0.1
    assert quadrature_weights(1, "rk4").tolist() == pytest.approx([-1 / 6, -1 / 3, -1 / 3, -1 / 6])
