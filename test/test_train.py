"""Training: a toy bimodal task is learned as two modes, runs are reproducible and resumable,
checkpoints round-trip exactly, and torchrun DDP works with two CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flow_policy_ros.errors import CheckpointError, ConfigError
from flow_policy_ros.export.onnx_export import sampler_from_checkpoint
from flow_policy_ros.policy.checkpoint import load_checkpoint, save_checkpoint
from flow_policy_ros.policy.config import ExperimentConfig, ObservationSpec, PolicyConfig, TrainConfig
from flow_policy_ros.policy.dataset import Windows
from flow_policy_ros.policy.train import train

REPO = Path(__file__).resolve().parents[1]


def toy_config(steps: int, **train_overrides) -> ExperimentConfig:
    """One joint, observation = [q, goal xyz] (obs_dim 4), chunk of H = 2 actions."""
    policy = PolicyConfig(
        observation=ObservationSpec(joint_names=("j",), fields=("joint_positions", "goal")),
        action_joint_names=("j",),
        horizon=2,
        solver_steps=10,
        hidden_dim=64,
        num_layers=2,
        limits={"lower": [-5.0], "upper": [5.0], "velocity": [10.0]},
    )
    train_cfg = TrainConfig(steps=steps, batch_size=256, lr=3e-3, checkpoint_every=max(1, steps // 2), log_every=10,
                            ema_decay=0.99, **train_overrides)
    return ExperimentConfig(policy=policy, train=train_cfg)


def bimodal_windows(path: Path, n: int = 4000, seed: int = 0) -> Path:
    """Per observation c = goal x in [0, 1]: the chunk is +(1 + c) or -(1 + c), equally likely.
    The conditional mean is 0, which no demonstration ever does."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.0, 1.0, size=n)
    sign = rng.choice([-1.0, 1.0], size=n)
    obs = np.stack([rng.normal(0, 0.1, n), c, np.zeros(n), np.zeros(n)], axis=1).astype(np.float32)
    value = sign * (1.0 + c)
    actions = np.repeat(value[:, None, None], 2, axis=1).astype(np.float32)
    Windows(obs, actions, np.arange(n), {"source": "toy bimodal"}).save_npz(path)
    return path


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toy")
    data = bimodal_windows(tmp / "toy.npz")
    result = train(data, toy_config(1500), tmp / "run", progress=False)
    return tmp, data, result


@pytest.mark.slow
def test_bimodal_training_recovers_both_modes_not_their_mean(toy_run):
    tmp, _, result = toy_run
    sampler = sampler_from_checkpoint(load_checkpoint(result.checkpoint_path))
    gen = torch.Generator().manual_seed(7)
    for c in (0.2, 0.8):
        obs = torch.tensor([[0.0, c, 0.0, 0.0]]).repeat(400, 1)
        noise = torch.randn(400, 2, 1, generator=gen)
        with torch.no_grad():
            samples = sampler(obs, noise, torch.ones(1))[:, 0, 0].numpy()
        target = 1.0 + c
        near_plus = np.mean(np.abs(samples - target) < 0.25)
        near_minus = np.mean(np.abs(samples + target) < 0.25)
        near_mean = np.mean(np.abs(samples) < 0.5)
        assert near_plus > 0.3 and near_minus > 0.3, (c, near_plus, near_minus)
        assert near_plus + near_minus > 0.85, (c, near_plus, near_minus)
        assert near_mean < 0.05, (c, near_mean)
    assert (tmp / "run" / "loss.png").stat().st_size > 1000
    assert (tmp / "run" / "train_summary.json").is_file()


def test_same_seed_gives_the_same_weights_and_resume_continues_exactly(tmp_path):
    data = bimodal_windows(tmp_path / "toy.npz", n=500)
    first = train(data, toy_config(40), tmp_path / "a", progress=False)
    second = train(data, toy_config(40), tmp_path / "b", progress=False)
    a, b = load_checkpoint(first.checkpoint_path), load_checkpoint(second.checkpoint_path)
    for key in a.ema_state:
        assert torch.equal(a.ema_state[key], b.ema_state[key]), key

    half = train(data, toy_config(40), tmp_path / "c", progress=False).checkpoint_path.parent / "step_0000020.pt"
    resumed = train(data, toy_config(40), tmp_path / "d", resume=half, progress=False)
    c = load_checkpoint(resumed.checkpoint_path)
    assert c.step == 40
    for key in a.model_state:
        assert torch.equal(a.model_state[key], c.model_state[key]), key

    other = train(data, toy_config(40, seed=1), tmp_path / "e", progress=False)
    d = load_checkpoint(other.checkpoint_path)
    assert not torch.equal(a.model_state["input_proj.weight"], d.model_state["input_proj.weight"])


def test_checkpoint_round_trip_is_exact(tmp_path):
    data = bimodal_windows(tmp_path / "toy.npz", n=300)
    ckpt = load_checkpoint(train(data, toy_config(5), tmp_path / "run", progress=False).checkpoint_path)
    save_checkpoint(tmp_path / "copy.pt", ckpt)
    again = load_checkpoint(tmp_path / "copy.pt")
    assert again.config == ckpt.config
    assert again.step == ckpt.step
    np.testing.assert_array_equal(again.stats.act_scale, ckpt.stats.act_scale)
    for key in ckpt.model_state:
        assert torch.equal(again.model_state[key], ckpt.model_state[key])
    assert again.data_summary == ckpt.data_summary


def test_checkpoint_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "garbage.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a flow_policy_ros checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"format": "flow_policy_ros.checkpoint", "version": 1, "config": {}, "model": {}, "ema": {}}, tmp_path / "nostats.pt")
    with pytest.raises(CheckpointError, match="lacks 'stats'"):
        load_checkpoint(tmp_path / "nostats.pt")


def test_train_cli_rejects_missing_data(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "flow_policy_ros", "train", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2
    assert "not found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_torchrun_ddp_with_two_cpu_processes(tmp_path):
    """Two gloo ranks train a few steps; rank 0 alone writes the checkpoint."""
    data = bimodal_windows(tmp_path / "toy.npz", n=500)
    config = tmp_path / "toy.yaml"
    import yaml

    config.write_text(yaml.safe_dump(toy_config(6).to_dict()))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*torchrun, "-m", "flow_policy_ros", "train", str(data), "--config", str(config),
         "--out", str(tmp_path / "ddp"), "--no-progress"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt.step == 6
    assert ckpt.data_summary["world_size"] == 2
    assert proc.stdout.count("trained 6 steps") == 1  # only rank 0 reports


def test_position_noise_moves_observations_but_keeps_absolute_targets():
    """After the augmentation, (relative chunk + perturbed positions) in robot units is still the
    demonstrated absolute target, exactly; the goal part of the observation is untouched."""
    from flow_policy_ros.policy.normalization import NormalizationStats, action_reference
    from flow_policy_ros.policy.train import PositionNoise

    policy = toy_config(1).policy
    rng = np.random.default_rng(0)
    obs = rng.normal(0, 1, (64, policy.obs_dim))
    actions = rng.normal(0, 1, (64, policy.horizon, policy.action_dim))
    indices = policy.action_reference_indices()
    relative = actions - action_reference(obs, indices)
    stats = NormalizationStats.fit(obs, relative, policy.normalization)
    obs_n = torch.tensor(stats.normalize_obs(obs), dtype=torch.float64)
    act_n = torch.tensor(stats.normalize_actions(relative), dtype=torch.float64)
    noise = PositionNoise(policy, stats, 0.05, torch.device("cpu"))
    noise.obs_scale, noise.act_scale = noise.obs_scale.double(), noise.act_scale.double()
    noisy_obs_n, noisy_act_n = noise(obs_n, act_n, torch.Generator().manual_seed(0))
    noisy_obs = noisy_obs_n.numpy() * stats.obs_scale + stats.obs_shift
    targets = stats.unnormalize_actions(noisy_act_n.numpy()) + action_reference(noisy_obs, indices)
    np.testing.assert_allclose(targets, actions, atol=1e-12)
    moved = np.abs(noisy_obs - obs)
    assert 0.02 < moved[:, 0].mean() < 0.06  # positions moved by ~N(0, 0.05)
    np.testing.assert_allclose(moved[:, 1:], 0.0, atol=1e-12)  # goal untouched


def test_prefix_noise_moves_the_prefix_and_returns_to_the_demonstration_smoothly():
    """RTC prefix noise: offset + velocity on the rows < d, a C2 return to the demonstration over R
    rows after them, nothing beyond, nothing for d = 0; in robot units."""
    from flow_policy_ros.policy.config import PolicyConfig
    from flow_policy_ros.policy.normalization import NormalizationStats
    from flow_policy_ros.policy.train import PrefixNoise

    policy = PolicyConfig(horizon=16, rtc_max_delay=6)
    rng = np.random.default_rng(1)
    stats = NormalizationStats.fit(rng.normal(0, 1, (32, policy.obs_dim)), rng.normal(0, 1, (32, 16, 7)), "minmax")
    noise = PrefixNoise(policy, stats, 0.02, 0.25, 4, torch.device("cpu"))
    d = torch.tensor([0, 1, 5])
    e, v = torch.full((3, 7), 0.01), torch.full((3, 7), 0.5)
    delta = noise.delta(d, e, v).numpy()[:, :, 0]
    np.testing.assert_array_equal(delta[0], 0.0)  # no prefix, no perturbation
    dt = policy.control_period_s
    np.testing.assert_allclose(delta[2, :5], 0.01 + 0.5 * dt * np.arange(-4, 1), atol=1e-7)  # the prefix: e + v (h - d + 1) dt
    np.testing.assert_array_equal(delta[2, 4 + 4:], 0.0)  # back on the demonstration R = 4 rows after the prefix
    np.testing.assert_array_equal(delta[1, 4:], 0.0)
    # C1 at the prefix boundary: the step into the blend continues the prefix's velocity (smoothstep s'(0) = 0)
    assert abs((delta[2, 5] - delta[2, 4]) - 0.5 * dt) < 0.3 * 0.5 * dt
    act_n = torch.zeros(3, 16, 7)
    out = noise(act_n, d, torch.Generator().manual_seed(0))
    moved = (out - act_n).numpy() * stats.act_scale  # rad
    np.testing.assert_array_equal(moved[0], 0.0)
    assert np.all(np.abs(moved[2, :5]).max(axis=0) > 0) and np.all(moved[2, 9:] == 0)
    assert torch.equal(PrefixNoise(policy, stats, 0.0, 0.0, 4, torch.device("cpu"))(act_n, d, torch.Generator()), act_n)


# --------------------------------------------------------------------------- training feedback


def episodic_windows(path: Path, episodes: int = 20, seed: int = 0) -> Path:
    """Toy windows grouped in episodes of 10..30 windows (episode e's windows have goal x = e / episodes)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(10, 31, size=episodes)
    episode_index = np.repeat(np.arange(episodes), sizes)
    n = len(episode_index)
    c = episode_index / episodes
    obs = np.stack([rng.normal(0, 0.1, n), c, np.zeros(n), np.zeros(n)], axis=1).astype(np.float32)
    actions = np.repeat((1.0 + c)[:, None, None], 2, axis=1).astype(np.float32)
    Windows(obs, actions, episode_index, {"source": "toy episodic"}).save_npz(path)
    return path


def test_split_holds_out_whole_episodes_chosen_by_the_seed():
    from flow_policy_ros.errors import UsageError
    from flow_policy_ros.policy.train import held_out_names, split_episodes

    episode_index = np.repeat(np.arange(40), np.arange(1, 41))  # episode e has e + 1 windows
    split = split_episodes(episode_index, 0.1, seed=3)
    assert len(split.val_episodes) == 4
    assert set(episode_index[split.train]).isdisjoint(episode_index[split.val])
    assert set(episode_index[split.val]) == set(split.val_episodes.tolist())
    assert len(split.train) + len(split.val) == len(episode_index)
    np.testing.assert_array_equal(split_episodes(episode_index, 0.1, seed=3).val, split.val)
    assert not np.array_equal(split_episodes(episode_index, 0.1, seed=4).val_episodes, split.val_episodes)
    assert len(split_episodes(episode_index, 0.001, seed=0).val_episodes) == 1  # at least one episode
    assert len(split_episodes(episode_index, 0.99, seed=0).val_episodes) == 38  # at least 2 episodes train
    assert len(split_episodes(np.repeat(np.arange(3), 5), 0.05, seed=0).val_episodes) == 1  # 3 episodes: 2 train
    with pytest.raises(UsageError, match="2 episode.*would leave 1 to train on .at least 2.*--val-fraction 0"):
        split_episodes(np.repeat(np.arange(2), 5), 0.05, seed=0)
    assert held_out_names(np.array([0, 2]), {"sources": ["ep_a", "ep_b", "ep_c"]}) == "held out: ep_a, ep_c"
    assert held_out_names(np.arange(7), {}, shown=2) == "held out: episode index 0, episode index 1 and 5 more"
    none = split_episodes(episode_index, 0.0, seed=0)
    assert len(none.val) == 0 and len(none.train) == len(episode_index)
    with pytest.raises(UsageError, match="val_fraction 0.05.*1 episode"):
        split_episodes(np.zeros(100, np.int64), 0.05, seed=0)
    with pytest.raises(ConfigError, match="val_fraction"):
        TrainConfig(val_fraction=1.0)


def test_training_reports_dataset_split_csv_log_and_validation(tmp_path):
    """The console lines give the dataset size and the split; train_log.csv has a row per log step with
    the validation loss at validation steps only; the statistics come from the training episodes alone;
    the summary and the loss plot carry the validation loss."""
    import csv

    from flow_policy_ros.policy.normalization import NormalizationStats, action_reference
    from flow_policy_ros.policy.train import split_episodes

    data = episodic_windows(tmp_path / "toy.npz")
    config = toy_config(40, val_fraction=0.2, val_every=20)
    lines: list[str] = []
    result = train(data, config, tmp_path / "run", progress=False, log=lines.append)
    windows = Windows.load_npz(data)
    split = split_episodes(windows.episode_index, 0.2, seed=0)
    text = "\n".join(lines)
    assert f"data: 20 episodes, {len(windows)} windows" in text
    assert f"train 16 episodes / {len(split.train)} windows, validation 4 episodes / {len(split.val)} windows" in text
    held_out = ", ".join(f"episode index {e}" for e in split.val_episodes)  # npz windows: no episode names
    assert f"(held out: {held_out}; --val-fraction 0 trains on every episode)" in text
    with open(tmp_path / "run" / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40]
    assert [r["val_loss"] != "" for r in rows] == [False, True, False, True]
    assert all(float(r["lr"]) > 0 and float(r["train_loss"]) > 0 for r in rows)
    walls = [float(r["wall_time_s"]) for r in rows]
    assert walls == sorted(walls)
    assert result.val_loss == pytest.approx(float(rows[-1]["val_loss"]), rel=1e-5) and not result.interrupted
    ckpt = load_checkpoint(result.checkpoint_path)
    assert ckpt.data_summary["split"]["val_windows"] == len(split.val)
    assert ckpt.data_summary["split"]["val_episode_index"] == split.val_episodes.tolist()
    obs = windows.observations[split.train]
    relative = windows.actions[split.train] - action_reference(obs, config.policy.action_reference_indices())
    expected = NormalizationStats.fit(obs, relative, config.policy.normalization)
    np.testing.assert_allclose(ckpt.stats.act_scale, expected.act_scale, rtol=1e-6)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["final_val_loss"] == pytest.approx(result.val_loss)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_resume_says_which_step_it_runs_to_and_continues_the_log(tmp_path):
    import csv

    data = episodic_windows(tmp_path / "toy.npz")
    config = toy_config(40, val_every=20)
    train(data, config, tmp_path / "a", progress=False)
    lines: list[str] = []
    train(data, config, tmp_path / "b", resume=tmp_path / "a" / "step_0000020.pt", progress=False, log=lines.append)
    assert any("at step 20: training to step 40 (20 steps to go)" in line for line in lines), lines
    with open(tmp_path / "b" / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40]  # the history travels in the checkpoint
    assert float(rows[2]["wall_time_s"]) >= float(rows[1]["wall_time_s"])


def test_resume_of_a_finished_run_says_how_to_extend_it(tmp_path, capsys):
    """`train --resume OUT/last.pt` after the run finished: exit 2, one line giving the step and the
    flag to pass, before any data is read (the data path here is an empty file); --steps extends it."""
    import yaml

    from flow_policy_ros.cli import main

    data = episodic_windows(tmp_path / "toy.npz")
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(toy_config(20).to_dict()))
    train(data, ExperimentConfig.from_yaml(config), tmp_path / "a", progress=False)
    (tmp_path / "empty.npz").write_bytes(b"")
    argv = ["train", str(tmp_path / "empty.npz"), "--config", str(config), "--out", str(tmp_path / "a"),
            "--resume", str(tmp_path / "a" / "last.pt"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "the run finished at step 20 of train.steps 20; pass --steps M with M > 20 (the new total)" in err
    argv[1] = str(data)
    assert main([*argv, "--steps", "30"]) == 0
    assert load_checkpoint(tmp_path / "a" / "last.pt").step == 30


def test_ctrl_c_saves_a_checkpoint_says_where_and_the_run_resumes(tmp_path):
    """SIGINT during training: the run stops after the current step, writes last.pt at that step, says so,
    exits 130; --resume from it continues to train.steps."""
    import signal
    import time

    import yaml

    data = episodic_windows(tmp_path / "toy.npz")
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(toy_config(1_000_000, val_every=10_000).to_dict()))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "flow_policy_ros", "train", str(data), "--config", str(config), "--out", str(out),
           "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:  # wait for a few logged rows, not for a time
            log = out / "train_log.csv"
            if log.is_file() and len(log.read_text().splitlines()) >= 4:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stdout + stderr
    ckpt = load_checkpoint(out / "last.pt")
    assert 30 <= ckpt.step < 1_000_000
    assert f"interrupted at step {ckpt.step}/1000000: checkpoint saved to {out / 'last.pt'}" in stdout
    assert f"stopped at step {ckpt.step}/1000000" in stdout
    resumed = subprocess.run([*cmd, "--resume", str(out / "last.pt"), "--steps", str(ckpt.step + 5)],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {ckpt.step}: training to step {ckpt.step + 5} (5 steps to go)" in resumed.stdout
    assert load_checkpoint(out / "last.pt").step == ckpt.step + 5


def test_train_cli_on_joint_trajectory_controller_recordings(tmp_path):
    """`flow-policy train` on a robot's JTC recordings with the shipped JTC config (a small network and
    a few steps): the windows come from the JointTrajectory commands, and the checkpoint says so."""
    import jtc_bags
    import yaml

    from flow_policy_ros.cli import main

    for i in range(2):
        jtc_bags.write_episode(tmp_path / "demo_bags" / f"episode_{i:04d}", jtc_bags.make_episode(seed=i),
                               "joint_trajectory", seed=i)
    config = yaml.safe_load((REPO / "config" / "train_reach_jtc.yaml").read_text())
    config["policy"].update(hidden_dim=16, num_layers=1, horizon=4, basis_size=4)  # the shipped recipe: B-spline chunks
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    code = main(["train", str(tmp_path / "demo_bags"), "--config", str(tmp_path / "config.yaml"), "--out",
                 str(tmp_path / "run"), "--steps", "3", "--val-fraction", "0", "--no-progress"])
    assert code == 0
    summary = load_checkpoint(tmp_path / "run" / "last.pt").data_summary
    assert summary["action_source"] == "joint_trajectory"
    assert summary["episodes"] == 2 and summary["windows"] == 2 * 36


def test_checkpoint_and_export_metadata_say_where_the_limits_came_from(toy_run):
    from flow_policy_ros.export.onnx_export import summarize_training_data
    from flow_policy_ros.policy.train import limits_source

    _, _, result = toy_run
    summary = load_checkpoint(result.checkpoint_path).data_summary
    assert summary["limits_source"] == "config (policy.limits)"  # toy_config gives its limits
    assert summarize_training_data(summary)["limits_source"] == "config (policy.limits)"
    assert limits_source(PolicyConfig()).startswith("iiwa defaults")
