"""Smooth chunk bases: orthonormal, smooth, shape contract through the network, sampler and export."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from model_factory import make_checkpoint

from flow_policy_ros.export.onnx_export import export_checkpoint, sampler_from_checkpoint
from flow_policy_ros.policy.basis import bspline_matrix, chunk_basis_matrix, dct_matrix, reconstruction_error
from flow_policy_ros.policy.checkpoint import load_checkpoint
from flow_policy_ros.policy.config import ConfigError, PolicyConfig
from flow_policy_ros.policy.flow import sample_chunks, training_loss
from flow_policy_ros.policy.model import VelocityNet
from flow_policy_ros.runtime.onnx_policy import OnnxPolicy


@pytest.mark.parametrize("kind", ["dct", "bspline"])
@pytest.mark.parametrize("size", [2, 4, 6, 8, 16])
def test_basis_is_orthonormal_with_the_right_shape(kind, size):
    m = chunk_basis_matrix(kind, 16, size)
    assert m.shape == (16, size)
    np.testing.assert_allclose(m.T @ m, np.eye(size), atol=1e-12)


def test_none_is_the_identity():
    np.testing.assert_array_equal(chunk_basis_matrix("none", 16, 0), np.eye(16))


def test_dct_matches_scipy_convention():
    """Column k is the orthonormal DCT-II: sum_h m[h, k] x[h] = DCT-II(x)[k] with norm='ortho'."""
    x = np.random.default_rng(0).standard_normal(16)
    full = dct_matrix(16, 16)
    np.testing.assert_allclose(full @ (full.T @ x), x, atol=1e-12)  # complete and orthonormal
    np.testing.assert_allclose(full[:, 0], np.full(16, 0.25))  # DC: 1 / sqrt(H)


def test_bspline_partition_of_unity_and_cubic_reproduction():
    raw = bspline_matrix(16, 6)
    np.testing.assert_allclose(raw.sum(axis=1), 1.0, atol=1e-12)
    m = chunk_basis_matrix("bspline", 16, 6)
    t = np.linspace(0, 1, 16)
    for poly in (np.ones_like(t), t, t**2 - 0.3 * t, t**3):
        chunk = np.stack([poly, -2 * poly], axis=1)[None]  # (1, H, 2)
        assert reconstruction_error(chunk, m)[0] < 1e-12


@pytest.mark.parametrize("kind", ["dct", "bspline"])
def test_projection_removes_per_step_jitter(kind):
    """A decoded chunk's second difference is far below white noise's (what the basis is for)."""
    m = chunk_basis_matrix(kind, 16, 6)
    noise = np.random.default_rng(1).standard_normal((256, 16, 7))
    smooth = np.einsum("hk,nka->nha", m, np.einsum("hk,nha->nka", m, noise))
    assert np.abs(np.diff(smooth, 2, axis=1)).mean() < 0.25 * np.abs(np.diff(noise, 2, axis=1)).mean()


def test_projected_noise_is_standard_normal():
    m = torch.tensor(chunk_basis_matrix("dct", 16, 6), dtype=torch.float64)
    x0 = torch.randn(20000, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    c0 = x0 @ m
    torch.testing.assert_close(torch.cov(c0.T), torch.eye(6, dtype=torch.float64), atol=0.05, rtol=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"chunk_basis": "wavelet"}, "chunk_basis must be one of"),
        ({"chunk_basis": "dct", "basis_size": 0}, "basis_size must be in"),
        ({"chunk_basis": "dct", "basis_size": 17}, "basis_size must be in"),
    ],
)
def test_bad_basis_config_names_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        PolicyConfig(horizon=16, **overrides)


def test_network_state_and_sampler_shapes():
    cfg = PolicyConfig(hidden_dim=32, num_layers=1, horizon=16, solver_steps=3, chunk_basis="dct", basis_size=5)
    net = VelocityNet(cfg)
    assert cfg.flow_state_rows == 5 and net.input_proj.in_features == 5 * 7 and net.output_proj.out_features == 5 * 7
    assert "basis" not in net.state_dict()  # derived from the config, not stored
    obs = torch.randn(3, cfg.obs_dim)
    with torch.no_grad():
        net.output_proj.weight.normal_(0, 0.2)
        out = sample_chunks(net, obs, torch.randn(3, 16, 7), 1.5, cfg.solver_steps)
    assert out.shape == (3, 16, 7)
    m = net.basis
    torch.testing.assert_close(m @ (m.T @ out), out, atol=1e-5, rtol=0)  # in the span of the basis
    loss = training_loss(net, obs, torch.randn(3, 16, 7), 0.1, torch.Generator().manual_seed(0))
    assert loss.loss.ndim == 0 and torch.isfinite(loss.loss)


def test_export_parity_and_contract_with_a_basis(tmp_path):
    ckpt = make_checkpoint(tmp_path / "p.pt", seed=2, horizon=16, solver_steps=10, hidden_dim=48, num_layers=2,
                           chunk_basis="bspline", basis_size=6)
    _, rows = export_checkpoint(ckpt, tmp_path / "p.onnx")
    assert max(r.max_abs_diff for r in rows) <= 1e-4
    model = onnx.load(str(tmp_path / "p.onnx"))
    assert not {n.op_type for n in model.graph.node} & {"Loop", "If", "Scan"}
    assert [i.name for i in model.graph.input] == ["observation", "noise", "guidance_scale"]
    policy = OnnxPolicy(tmp_path / "p.onnx", providers=["CPUExecutionProvider"])
    sampler = sampler_from_checkpoint(load_checkpoint(ckpt))
    obs = np.random.default_rng(0).normal(0, 0.5, (2, sampler.obs_shift.shape[0])).astype(np.float32)
    noise = np.random.default_rng(1).standard_normal((2, 16, 7)).astype(np.float32)
    w = np.array([1.0], np.float32)
    (onnx_out,) = policy.session.run(None, {"observation": obs, "noise": noise, "guidance_scale": w})
    with torch.no_grad():
        torch_out = sampler(torch.from_numpy(obs), torch.from_numpy(noise), torch.from_numpy(w)).numpy()
    assert onnx_out.shape == (2, 16, 7)
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4)


def test_noise_scale_is_baked_into_the_graph(tmp_path):
    """noise_scale 0 makes the sample deterministic (noise ignored); the metadata records it and the basis."""
    ckpt = make_checkpoint(tmp_path / "p.pt", seed=4, horizon=16, solver_steps=4, chunk_basis="dct", basis_size=4)
    meta, rows = export_checkpoint(ckpt, tmp_path / "p.onnx", noise_scale=0.0)
    assert max(r.max_abs_diff for r in rows) <= 1e-4
    assert (meta.noise_scale, meta.chunk_basis) == (0.0, "dct/4")
    policy = OnnxPolicy(tmp_path / "p.onnx", providers=["CPUExecutionProvider"])
    assert (policy.metadata.noise_scale, policy.metadata.chunk_basis) == (0.0, "dct/4")
    obs = np.zeros(policy.metadata.obs_dim, np.float32)
    a = policy.predict(obs, noise=np.random.default_rng(0).standard_normal((16, 7)).astype(np.float32))
    b = policy.predict(obs, noise=np.random.default_rng(1).standard_normal((16, 7)).astype(np.float32))
    np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ConfigError, match="noise_scale must be in"):
        PolicyConfig(noise_scale=1.5)


def test_position_noise_blend_returns_smoothly_to_the_demonstration():
    from flow_policy_ros.policy.normalization import NormalizationStats
    from flow_policy_ros.policy.train import PositionNoise

    cfg = PolicyConfig(horizon=16, observation={"fields": ["joint_positions", "goal"]})
    stats = NormalizationStats("minmax", np.zeros(10), np.ones(10), np.zeros(7), np.ones(7))
    obs, act = torch.zeros(2, 10), torch.zeros(2, 16, 7)
    for blend in (0, 8):
        noise = PositionNoise(cfg, stats, 0.05, torch.device("cpu"), blend_steps=blend)
        obs_n, act_n = noise(obs, act, torch.Generator().manual_seed(0))
        e = obs_n[:, :7]
        shift = -act_n / e[:, None, :]  # fraction of the perturbation removed at step h
        expected = torch.ones(16) if blend == 0 else torch.tensor([0.0, *[float(s) for s in noise.blend[1:]]])
        torch.testing.assert_close(shift, expected[None, :, None].expand_as(shift), atol=1e-5, rtol=0)
    assert noise.blend[0] == 0.0 and torch.all(noise.blend[8:] == 1.0) and torch.all(torch.diff(noise.blend) >= 0)
