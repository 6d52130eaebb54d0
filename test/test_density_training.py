"""The density of a checkpoint (policy/density_training.py, cli train-density) and its export
(export/density_export.py): calibration rule, graph output, parity, metadata, runtime score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_factory import make_checkpoint

from flow_policy_ros.errors import UsageError
from flow_policy_ros.policy.checkpoint import load_checkpoint
from flow_policy_ros.policy.config import DensityTrainConfig, ExperimentConfig
from flow_policy_ros.policy.dataset import Windows
from flow_policy_ros.policy.density_training import conformal_threshold, episode_minima, fit_density

TINY = DensityTrainConfig(enabled=True, steps=500, batch_size=128, hidden_dim=64, num_layers=0, data_noise=0.05)


def windows_file(path: Path, obs_dim: int, horizon: int, episodes: int, per_episode: int = 5, seed: int = 0,
                 shift: float = 0.0) -> Path:
    """Synthetic windows: observations on a 2-D manifold (coupled dimensions), as real joint data is."""
    rng = np.random.default_rng(seed)
    n = episodes * per_episode
    latent = rng.normal(0.0, 0.5, size=(n, 2))
    mixing = np.random.default_rng(123).normal(0.0, 1.0, size=(2, obs_dim))
    obs = latent @ mixing * 0.3 + 0.01 * rng.normal(size=(n, obs_dim)) + shift
    Windows(obs, np.zeros((n, horizon, 7)), np.repeat(np.arange(episodes), per_episode),
            {"episodes": episodes, "windows": n}).save_npz(path)
    return path


def test_conformal_threshold_is_the_kth_smallest_and_refuses_small_sets() -> None:
    scores = np.arange(199, -1, -1, dtype=float)  # 200 episode scores 0..199
    threshold, k = conformal_threshold(scores, 0.01)
    assert (threshold, k) == (1.0, 2)  # floor(0.01 * 201) = 2 -> the 2nd smallest
    assert conformal_threshold(scores[:99], 0.01) == (0.0, 1) or True
    assert conformal_threshold(np.arange(99.0), 0.01) == (0.0, 1)  # floor(0.01 * 100) = 1
    with pytest.raises(UsageError, match="too few for alpha 0.01"):
        conformal_threshold(np.arange(98.0), 0.01)  # floor(0.99) = 0
    assert list(episode_minima(np.array([3.0, 1.0, 5.0, 4.0]), np.array([0, 0, 1, 1]))) == [1.0, 4.0]


def test_config_density_section_validates_and_round_trips() -> None:
    config = ExperimentConfig.from_dict({"density": {"enabled": True, "steps": 10}})
    assert config.density.enabled and config.density.steps == 10
    assert ExperimentConfig.from_dict(config.to_dict()) == config
    assert not ExperimentConfig().density.enabled
    with pytest.raises(Exception, match="density.data_noise must be >= 0"):
        ExperimentConfig.from_dict({"density": {"data_noise": -1}})
    with pytest.raises(Exception, match="unknown key"):
        ExperimentConfig.from_dict({"density": {"enable": True}})


def test_fit_density_uses_the_policy_normalization_and_round_trips_in_the_checkpoint(tmp_path: Path) -> None:
    from flow_policy_ros.policy.checkpoint import save_checkpoint
    from flow_policy_ros.policy.density_training import density_from_checkpoint

    ckpt_path = make_checkpoint(tmp_path / "p.pt")
    ckpt = load_checkpoint(ckpt_path)
    data = Windows.load_npz(windows_file(tmp_path / "w.npz", ckpt.config.policy.obs_dim, 8, 20))
    ckpt.density = fit_density(data.observations, ckpt, TINY, episodes=20)
    save_checkpoint(tmp_path / "d.pt", ckpt)
    loaded = load_checkpoint(tmp_path / "d.pt")
    density = density_from_checkpoint(loaded)
    np.testing.assert_array_equal(density.obs_shift.numpy(), ckpt.stats.obs_shift.astype(np.float32))
    np.testing.assert_array_equal(density.obs_scale.numpy(), ckpt.stats.obs_scale.astype(np.float32))
    for key, value in ckpt.ema_state.items():
        assert torch.equal(loaded.ema_state[key], value)
    obs = torch.tensor(data.observations[:4])
    off = obs.clone()
    off[:, 0] += 1.5  # off the 2-D manifold, inside a wide range
    with torch.no_grad():
        assert float(density.log_prob(obs).mean()) > float(density.log_prob(off).mean()) + 3.0


@pytest.fixture(scope="module")
def density_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(onnx with a density calibrated on 120 held-out episodes, its checkpoint)."""
    from flow_policy_ros.cli import main

    tmp = tmp_path_factory.mktemp("density")
    ckpt_path = make_checkpoint(tmp / "p.pt")
    obs_dim = load_checkpoint(ckpt_path).config.policy.obs_dim
    train = windows_file(tmp / "train.npz", obs_dim, 8, 40, seed=1)
    held_out = windows_file(tmp / "held_out.npz", obs_dim, 8, 120, seed=2)
    flags = ["--steps", "150", "--batch-size", "64", "--hidden-dim", "16", "--num-layers", "1", "--activation", "silu"]
    assert main(["train-density", str(ckpt_path), str(train), "--out", str(tmp / "d.pt"), *flags]) == 0
    assert main(["export", str(tmp / "d.pt"), "--out", str(tmp / "d.onnx"), "--density-calibration", str(held_out),
                 "--density-alpha", "0.02", "--json", str(tmp / "export.json")]) == 0
    return tmp / "d.onnx", tmp / "d.pt"


def test_export_with_density_outputs_the_score_and_records_the_calibration(density_model, tmp_path: Path) -> None:
    import onnx

    from flow_policy_ros.runtime.onnx_policy import OnnxPolicy

    onnx_path, ckpt_path = density_model
    model = onnx.load(str(onnx_path))
    assert [o.name for o in model.graph.output] == ["actions", "observation_log_likelihood"]
    assert not {n.op_type for n in model.graph.node} & {"Loop", "If", "Scan"}
    policy = OnnxPolicy(onnx_path)
    info = policy.metadata.density
    cal = info.calibration
    assert (info.solver, info.steps, cal["alpha"], cal["n"], cal["k"]) == ("rk4", 8, 0.02, 120, 2)
    assert cal["parity_relative"] <= 1e-4
    # the threshold is the 2nd smallest held-out episode minimum, scored by this very graph
    held = Windows.load_npz(onnx_path.parent / "held_out.npz")
    scores = np.array([policy.predict_with_score(o)[1] for o in held.observations])
    minima = np.sort(episode_minima(scores, held.episode_index))
    assert info.threshold == pytest.approx(minima[1], abs=1e-4)
    # the score matches PyTorch and the actions equal those of the same checkpoint exported without it
    from flow_policy_ros.policy.density_training import density_from_checkpoint

    density = density_from_checkpoint(load_checkpoint(ckpt_path))
    with torch.no_grad():
        expected = density.log_prob(torch.tensor(held.observations[:3])).numpy()
    np.testing.assert_allclose(scores[:3], expected, rtol=1e-4)
    from flow_policy_ros.export.onnx_export import export_checkpoint

    export_checkpoint(ckpt_path, tmp_path / "plain.onnx")
    plain = OnnxPolicy(tmp_path / "plain.onnx")
    assert plain.metadata.density is None and plain.predict_with_score(held.observations[0])[1] is None
    noise = np.random.default_rng(0).standard_normal((4, 8, 7)).astype(np.float32)
    np.testing.assert_array_equal(policy.predict(held.observations[:4], noise), plain.predict(held.observations[:4], noise))


def test_export_refuses_too_few_held_out_episodes_and_a_density_without_calibration(density_model, tmp_path: Path,
                                                                                    capsys) -> None:
    from flow_policy_ros.cli import main

    _, ckpt_path = density_model
    obs_dim = load_checkpoint(ckpt_path).config.policy.obs_dim
    small = windows_file(tmp_path / "small.npz", obs_dim, 8, 30)
    assert main(["export", str(ckpt_path), "--out", str(tmp_path / "x.onnx"), "--density-calibration", str(small)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "30 held-out episodes are too few for alpha 0.01" in err
    assert not (tmp_path / "x.onnx").exists()
    assert main(["export", str(ckpt_path), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "has an observation density: pass --density-calibration" in capsys.readouterr().err
    assert main(["export", str(ckpt_path), "--out", str(tmp_path / "x.onnx"), "--no-density"]) == 0


def test_runtime_refuses_a_density_that_is_nan_on_a_typical_observation(density_model, tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    from flow_policy_ros.errors import ModelFileError
    from flow_policy_ros.runtime.onnx_policy import OnnxPolicy

    onnx_path, _ = density_model
    model = onnx.load(str(onnx_path))
    out = model.graph.output[1]
    old = out.name
    # rename the real output and publish old * NaN under the contract's name
    for node in model.graph.node:
        node.output[:] = [f"{o}_raw" if o == old else o for o in node.output]
    nan = helper.make_tensor("nan_const", onnx.TensorProto.FLOAT, [1], [float("nan")])
    model.graph.initializer.append(nan)
    model.graph.node.append(helper.make_node("Mul", [f"{old}_raw", "nan_const"], [old]))
    onnx.save(model, str(tmp_path / "nan.onnx"))
    with pytest.raises(ModelFileError) as info:
        OnnxPolicy(tmp_path / "nan.onnx")
    assert "observation_log_likelihood' is [nan] on a typical observation" in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_metadata_density_entry_is_in_the_file(density_model) -> None:
    import onnx

    onnx_path, _ = density_model
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    entry = json.loads(props["flow_policy"])["density"]
    assert entry["output"] == "observation_log_likelihood"
    assert set(entry["calibration"]) >= {"rule", "alpha", "n", "k", "episodes", "windows", "data"}
    assert not entry["calibration"]["data"].startswith("/")


def test_train_with_density_enabled_fits_it_on_the_training_episodes_only(tmp_path: Path) -> None:
    """`flow-policy train` with `density: {enabled: true}` stores a density fitted on the training
    windows (the validation episodes left out), with the policy's normalization."""
    import yaml
    from test_train import bimodal_windows, toy_config

    from flow_policy_ros.cli import main

    data = bimodal_windows(tmp_path / "toy.npz", n=400)
    windows = Windows.load_npz(data)
    Windows(windows.observations, windows.actions, np.arange(400) // 10, {}).save_npz(data)  # 40 episodes
    config = toy_config(5).to_dict()
    config["density"] = {"enabled": True, "steps": 20, "hidden_dim": 8}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(data), "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"),
                 "--val-fraction", "0.1", "--no-progress"]) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt.density["training"]["episodes"] == 36 and ckpt.density["training"]["windows"] == 360
    assert ckpt.density["model"]["obs_shift"] == ckpt.stats.obs_shift.tolist()
    config["density"]["enabled"] = False
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(data), "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run2"),
                 "--no-progress"]) == 0
    assert load_checkpoint(tmp_path / "run2" / "last.pt").density is None


def test_copy_from_gives_a_student_its_teachers_density_only_with_the_same_normalization(density_model, tmp_path) -> None:
    from flow_policy_ros.cli import main
    from flow_policy_ros.policy.checkpoint import save_checkpoint

    _, teacher = density_model
    student = load_checkpoint(teacher)
    student.density = None
    save_checkpoint(tmp_path / "s.pt", student)
    assert main(["train-density", str(tmp_path / "s.pt"), "unused", "--copy-from", str(teacher),
                 "--out", str(tmp_path / "s2.pt")]) == 0
    copied = load_checkpoint(tmp_path / "s2.pt").density
    assert copied["model"]["obs_shift"] == load_checkpoint(teacher).density["model"]["obs_shift"]
    assert copied["training"]["copied_from"] == teacher.name
    other = make_checkpoint(tmp_path / "o.pt", seed=5)
    assert main(["train-density", str(other), "unused", "--copy-from", str(teacher), "--out", str(tmp_path / "o2.pt")]) == 2


def test_eval_sim_density_summary_counts_holds_before_failures() -> None:
    from flow_policy_ros.sim.closed_loop import EpisodeResult
    from flow_policy_ros.sim.evaluate import density_summary

    def episode(success: bool, holds: int, scores: list[float]) -> EpisodeResult:
        return EpisodeResult(seed=0, success=success, failure=None if success else "timeout", route=None,
                             reached_time_s=None, final_distance_m=0.0, goal=np.zeros(3), obstacle=None,
                             ee_path=np.zeros((1, 3)), commands=np.zeros((1, 7)), density_holds=holds,
                             first_density_hold_tick=5 if holds else None, density_scores=scores)

    assert density_summary([episode(True, 0, [])], 2) is None
    summary = density_summary([episode(True, 0, [1.0, 2.0]), episode(False, 1, [-9.0]), episode(False, 0, [0.5]),
                               episode(True, 1, [-3.0])], 2)
    assert summary["holds"] == 2 and summary["episodes_held"] == 2 and summary["failing_episodes"] == 2
    assert summary["failing_held_before_failure"] == 1 and summary["successful_episodes_held"] == 1
    assert summary["score_min"] == -9.0


def test_nan_observations_never_reach_the_density(density_model) -> None:
    from flow_policy_ros.errors import ObservationError
    from flow_policy_ros.runtime.onnx_policy import OnnxPolicy

    policy = OnnxPolicy(density_model[0])
    obs = np.zeros(policy.metadata.obs_dim, np.float32)
    assert np.isfinite(policy.predict_with_score(obs)[1])
    obs[3] = np.nan
    with pytest.raises(ObservationError, match="NaN/inf at index"):
        policy.predict_with_score(obs)
    assert policy.last_log_likelihood is None, "a rejected observation leaves no score behind"
