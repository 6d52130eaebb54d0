"""Export: one self-contained ONNX graph, unrolled, with metadata, parity-checked; bad input
fails with one line and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from model_factory import make_checkpoint

from flow_policy_ros.export.onnx_export import export_checkpoint, sampler_from_checkpoint
from flow_policy_ros.policy.checkpoint import file_sha256, load_checkpoint
from flow_policy_ros.runtime.metadata import METADATA_KEY, PolicyMetadata
from flow_policy_ros.runtime.onnx_policy import OnnxPolicy

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flow_policy_ros", *args], capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    ckpt = make_checkpoint(tmp / "policy.pt", seed=3, horizon=16, solver_steps=10, hidden_dim=48, num_layers=2)
    proc = run_cli("export", str(ckpt), "--out", str(tmp / "policy.onnx"), "--json", str(tmp / "export.json"))
    assert proc.returncode == 0, proc.stderr
    return tmp, ckpt, tmp / "policy.onnx", proc


def test_graph_meets_the_contract(exported):
    _, _, path, _ = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    assert not {n.op_type for n in model.graph.node} & {"Loop", "If", "Scan"}
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert [i.name for i in model.graph.input] == ["observation", "noise", "guidance_scale"]
    assert [o.name for o in model.graph.output] == ["actions"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[1].type.tensor_type.shape.dim]
    assert dims[1:] == [16, 7] and isinstance(dims[0], str)  # dynamic batch
    assert not list(path.parent.glob(".*.tmp"))


def test_metadata_round_trip(exported):
    _, ckpt, path, _ = exported
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    meta = PolicyMetadata.from_json(props[METADATA_KEY])
    config = load_checkpoint(ckpt).config.policy
    assert meta.observation == config.observation
    assert meta.action_joint_names == config.action_joint_names
    assert (meta.horizon, meta.action_dim, meta.solver_steps) == (16, 7, 10)
    assert meta.limits == config.limits
    assert meta.control_period_s == config.control_period_s
    assert meta.checkpoint_sha256 == file_sha256(ckpt)
    assert PolicyMetadata.from_json(meta.to_json()) == meta


def test_parity_report_is_printed_and_small(exported):
    tmp, _, _, proc = exported
    report = json.loads((tmp / "export.json").read_text())
    assert len(report["parity"]) == 6
    assert {(r["guidance_scale"], r["batch"]) for r in report["parity"]} == {(w, b) for w in (0.0, 1.0, 2.0) for b in (1, 8)}
    assert report["max_abs_diff"] < 1e-4
    assert "parity" in proc.stdout and "OK" in proc.stdout


def test_onnx_runtime_matches_pytorch_sampler_and_guidance_changes_output(exported):
    _, ckpt, path, _ = exported
    policy = OnnxPolicy(path, providers=["CPUExecutionProvider"])
    sampler = sampler_from_checkpoint(load_checkpoint(ckpt))
    rng = np.random.default_rng(0)
    obs = rng.normal(0, 0.5, (5, 17)).astype(np.float32)
    noise = rng.standard_normal((5, 16, 7)).astype(np.float32)
    outputs = {}
    for w in (0.0, 1.0, 3.0):
        onnx_out = policy.predict(obs, noise, guidance_scale=w)
        with torch.no_grad():
            torch_out = sampler(torch.from_numpy(obs), torch.from_numpy(noise), torch.tensor([w])).numpy()
        np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4, rtol=0)
        outputs[w] = onnx_out
    assert np.max(np.abs(outputs[0.0] - outputs[3.0])) > 1e-3  # w is a live input, not folded


def test_regression_checkpoint_exports_a_noise_independent_graph(tmp_path):
    ckpt = make_checkpoint(tmp_path / "reg.pt", objective="regression")
    export_checkpoint(ckpt, tmp_path / "reg.onnx")
    policy = OnnxPolicy(tmp_path / "reg.onnx")
    obs = np.zeros(17, np.float32)
    assert policy.metadata.objective == "regression" and policy.metadata.solver_steps == 1
    np.testing.assert_array_equal(policy.predict(obs), policy.predict(obs))


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "checkpoint file not found"),
        ("corrupt", "not a readable checkpoint"),
        ("foreign", "not a flow_policy_ros checkpoint"),
        ("no_dir", "does not exist"),
    ],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, case, expected):
    ckpt = tmp_path / "c.pt"
    out = tmp_path / "out.onnx"
    if case == "corrupt":
        good = make_checkpoint(tmp_path / "good.pt")
        ckpt.write_bytes(good.read_bytes()[:2000])
    elif case == "foreign":
        torch.save({"model": {}}, ckpt)
    elif case == "no_dir":
        ckpt = make_checkpoint(ckpt)
        out = tmp_path / "missing_dir" / "out.onnx"
    proc = run_cli("export", str(ckpt), "--out", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_relative_action_frame_adds_the_measured_positions_back(tmp_path):
    """Same weights, two frames: the relative graph's output is the absolute graph's output plus
    the observed positions of the action joints (exactly the training transform, inverted)."""
    relative = make_checkpoint(tmp_path / "rel.pt", seed=4, action_frame="relative")
    absolute = make_checkpoint(tmp_path / "abs.pt", seed=4, action_frame="absolute")
    export_checkpoint(relative, tmp_path / "rel.onnx")
    export_checkpoint(absolute, tmp_path / "abs.onnx")
    rel, abs_ = OnnxPolicy(tmp_path / "rel.onnx"), OnnxPolicy(tmp_path / "abs.onnx")
    assert rel.metadata.action_frame == "relative" and abs_.metadata.action_frame == "absolute"
    rng = np.random.default_rng(1)
    obs = rng.normal(0, 0.5, (4, 17)).astype(np.float32)
    noise = rng.standard_normal((4, 8, 7)).astype(np.float32)
    difference = rel.predict(obs, noise) - abs_.predict(obs, noise)
    np.testing.assert_allclose(difference, np.broadcast_to(obs[:, None, :7], difference.shape), atol=1e-5)


def test_training_data_summary_in_metadata_stays_small():
    from flow_policy_ros.export.onnx_export import summarize_training_data

    summary = {"episodes": 3, "root": "data/reach", "sources": ["a", "b", "c"], "success": [True, False, True],
               "cache": {"hit": True}, "skipped_failures": 1}
    assert summarize_training_data(summary) == {
        "episodes": 3, "root": "data/reach", "sources_count": 3, "success_true": 2, "skipped_failures": 1,
    }


# --------------------------------------------------------------------------- solvers and real-time chunking


@pytest.mark.parametrize("solver", ["midpoint", "heun", "rk4"])
def test_export_with_a_solver_matches_pytorch_and_records_it(tmp_path, solver):
    ckpt = make_checkpoint(tmp_path / "p.pt", seed=5, horizon=8, solver_steps=4)
    meta, rows = export_checkpoint(ckpt, tmp_path / "p.onnx", steps=3, solver=solver)
    assert (meta.solver, meta.solver_steps) == (solver, 3)
    assert max(r.max_abs_diff for r in rows) <= 1e-4
    policy = OnnxPolicy(tmp_path / "p.onnx", warmup=0)
    assert (policy.metadata.solver, policy.metadata.steps, policy.rtc) == (solver, 3, False)
    # the graph really runs the solver: its output differs from the Euler export of the same weights
    export_checkpoint(ckpt, tmp_path / "e.onnx", steps=3)
    obs, noise = np.zeros(policy.metadata.obs_dim, np.float32), np.ones((8, 7), np.float32)
    euler = OnnxPolicy(tmp_path / "e.onnx", warmup=0).predict(obs, noise)
    assert np.max(np.abs(policy.predict(obs, noise) - euler)) > 1e-4
    sampler = sampler_from_checkpoint(load_checkpoint(ckpt), 3, solver=solver)
    with torch.no_grad():
        reference = sampler(torch.from_numpy(obs[None]), torch.from_numpy(noise[None]), torch.ones(1)).numpy()[0]
    np.testing.assert_allclose(policy.predict(obs, noise, 1.0), reference, atol=1e-4, rtol=0)


def test_unknown_solver_is_a_one_line_error(tmp_path):
    ckpt = make_checkpoint(tmp_path / "p.pt")
    proc = run_cli("export", str(ckpt), "--out", str(tmp_path / "p.onnx"), "--solver", "dopri5")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


@pytest.fixture(scope="module")
def rtc_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rtc")
    ckpt = make_checkpoint(tmp / "rtc.pt", seed=7, horizon=8, solver_steps=4, rtc_max_delay=3)
    meta, rows = export_checkpoint(ckpt, tmp / "rtc.onnx")
    return tmp / "rtc.onnx", ckpt, meta, rows


def test_rtc_export_parity_covers_prefix_lengths_and_guidance(rtc_model):
    path, _, meta, rows = rtc_model
    assert meta.rtc and meta.rtc_max_delay == 3
    assert {(r.prefix_length, r.guidance_scale, r.batch) for r in rows} == {
        (d, w, b) for d in (0, 1, 3) for w in (0.0, 1.0, 2.0) for b in (1, 8)}
    assert max(r.max_abs_diff for r in rows) <= 1e-4
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["observation", "noise", "guidance_scale", "prefix_actions", "prefix_length"]
    assert model.graph.input[4].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert not {n.op_type for n in model.graph.node} & {"Loop", "If", "Scan"}
    stored = PolicyMetadata.from_json({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert json.loads(stored.to_json())["rtc"] == {"max_delay": 3}


def test_rtc_model_returns_the_prefix_exactly(rtc_model):
    path, *_ = rtc_model
    policy = OnnxPolicy(path, warmup=1)
    assert policy.rtc
    rng = np.random.default_rng(0)
    obs = rng.normal(0, 0.5, (4, policy.metadata.obs_dim)).astype(np.float32)
    noise = rng.standard_normal((4, 8, 7)).astype(np.float32)
    prefix = rng.uniform(-1, 1, (4, 8, 7)).astype(np.float32)
    lengths = np.array([0, 1, 2, 3])
    out = policy.predict(obs, noise, 1.0, prefix, lengths)
    for b, d in enumerate(lengths):
        assert np.array_equal(out[b, :d], prefix[b, :d])
    plain = policy.predict(obs, noise, 1.0)  # no prefix given: d = 0
    np.testing.assert_array_equal(plain[0], out[0])
    changed = prefix.copy()
    changed[:, 5:] = 99.0  # rows >= d are ignored
    np.testing.assert_array_equal(policy.predict(obs, noise, 1.0, changed, lengths), out)


def test_rtc_model_with_a_smooth_basis_exports_and_returns_the_prefix(tmp_path):
    """The prefix conditions the network, so a B-spline flow (over coefficients) serves RTC too."""
    ckpt = make_checkpoint(tmp_path / "rtc_b.pt", seed=8, horizon=8, solver_steps=4, rtc_max_delay=3,
                           chunk_basis="bspline", basis_size=5)
    meta, rows = export_checkpoint(ckpt, tmp_path / "rtc_b.onnx")
    assert meta.rtc and meta.chunk_basis == "bspline/5"
    assert max(r.max_abs_diff for r in rows) <= 1e-4
    policy = OnnxPolicy(tmp_path / "rtc_b.onnx", warmup=0)
    rng = np.random.default_rng(1)
    obs = rng.normal(0, 0.5, (3, policy.metadata.obs_dim)).astype(np.float32)
    noise = rng.standard_normal((3, 8, 7)).astype(np.float32)
    prefix = rng.uniform(-1, 1, (3, 8, 7)).astype(np.float32)
    lengths = np.array([0, 2, 3])
    out = policy.predict(obs, noise, 1.0, prefix, lengths)
    for b, d in enumerate(lengths):
        assert np.array_equal(out[b, :d], prefix[b, :d])
    np.testing.assert_array_equal(policy.predict(obs, noise, 1.0)[0], out[0])
    assert not np.allclose(out[2, 3:], policy.predict(obs, noise, 1.0)[2, 3:])  # the prefix shapes what follows


@pytest.mark.parametrize("kwargs, message", [
    ({"prefix_length": 4}, r"outside \[0, d_max=3\]"),
    ({"prefix_length": -1}, r"outside \[0, d_max=3\]"),
    ({"prefix_length": 2}, "no prefix_actions"),
    ({"prefix_length": 2, "prefix_actions": np.full((8, 7), np.nan, np.float32)}, "NaN"),
    ({"prefix_length": 2, "prefix_actions": np.zeros((8, 6), np.float32)}, "prefix_actions shape"),
])
def test_rtc_bad_prefix_is_a_clear_error(rtc_model, kwargs, message):
    from flow_policy_ros.errors import ObservationError

    policy = OnnxPolicy(rtc_model[0], warmup=0)
    with pytest.raises(ObservationError, match=message):
        policy.predict(np.zeros(policy.metadata.obs_dim, np.float32), **kwargs)


def test_plain_model_refuses_a_prefix(exported):
    from flow_policy_ros.errors import ObservationError

    policy = OnnxPolicy(exported[2], warmup=0)
    assert not policy.rtc
    with pytest.raises(ObservationError, match="not a real-time chunking model"):
        policy.predict(np.zeros(policy.metadata.obs_dim, np.float32), prefix_length=2)


def test_metadata_carries_no_absolute_path_of_the_training_machine():
    from flow_policy_ros.export.onnx_export import summarize_training_data
    from flow_policy_ros.reports import portable_path

    out = summarize_training_data({"root": "/home/me/ws/data/reach", "data_path": "/srv/x/runs/w.npz", "episodes": 3})
    assert out == {"root": "data/reach", "data_path": "runs/w.npz", "episodes": 3}
    assert portable_path("/opt/somewhere/episodes.npz") == "episodes.npz"
    assert portable_path("data/reach") == "data/reach"


def test_export_writes_the_training_action_range(tmp_path):
    """From the data summary when it has one; else from minmax statistics (absolute frame: the targets'
    min/max; relative frame: the measured positions' range + the offsets' min/max); meanstd: none."""
    from flow_policy_ros.export.onnx_export import training_action_range

    recorded = {"low": [-0.5] * 7, "high": [0.25] * 7}
    ckpt = load_checkpoint(make_checkpoint(tmp_path / "a.pt", action_range=recorded))
    rng = training_action_range(ckpt)
    assert rng.low.tolist() == recorded["low"] and rng.high.tolist() == recorded["high"]
    assert rng.labels[0] == "lbr_iiwa_joint_1" and rng.source == "training targets (min/max)"
    ckpt = load_checkpoint(make_checkpoint(tmp_path / "b.pt", action_range={}, action_frame="absolute"))
    rng = training_action_range(ckpt)
    np.testing.assert_allclose(rng.low, ckpt.stats.act_shift - ckpt.stats.act_scale)
    np.testing.assert_allclose(rng.high, ckpt.stats.act_shift + ckpt.stats.act_scale)
    ckpt = load_checkpoint(make_checkpoint(tmp_path / "c.pt", action_range={}, action_frame="relative"))
    rng, measured = training_action_range(ckpt), ckpt.data_summary["observation_range"]
    idx = ckpt.config.policy.action_reference_indices()
    np.testing.assert_allclose(rng.low, np.array(measured["low"])[idx] + ckpt.stats.act_shift - ckpt.stats.act_scale)
    assert "relative" in rng.source
    ckpt = load_checkpoint(make_checkpoint(tmp_path / "d.pt", action_range={}, normalization="meanstd"))
    assert training_action_range(ckpt) is None
    export_checkpoint(make_checkpoint(tmp_path / "e.pt", action_range=recorded), tmp_path / "e.onnx")
    meta = json.loads(onnx.load(str(tmp_path / "e.onnx")).metadata_props[0].value)
    assert meta["action_range"] == {**recorded, "source": "training targets (min/max)"}
