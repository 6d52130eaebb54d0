"""``train.image_aux_feature``: a camera model's privileged training target (policy/aux_target.py).

Real bags (the package's bag writer) whose camera shows a bright square where the episode's goal
is: the windows carry the goal held at each tick beside (not inside) the observation, a short
training run teaches the head to read the square's position from the image, the head travels in
the checkpoint and a resume continues it; misconfigurations are one-line config errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flow_policy_ros.contract import ObservationSpec, goal_feature, image_feature
from flow_policy_ros.data import bag as bagio
from flow_policy_ros.data.images import ImageSeries
from flow_policy_ros.data.recording import EpisodeRecording
from flow_policy_ros.errors import ConfigError, UsageError
from flow_policy_ros.policy import dataset
from flow_policy_ros.policy.aux_target import AuxTarget, validation_rmse
from flow_policy_ros.policy.checkpoint import load_checkpoint
from flow_policy_ros.policy.config import DataConfig, ExperimentConfig, PolicyConfig, TrainConfig, aux_feature
from flow_policy_ros.policy.model import VelocityNet
from flow_policy_ros.policy.train import train

NAMES = [f"lbr_iiwa_joint_{i}" for i in range(1, 8)]
EPOCH = 1_700_000_000_000_000_000
SIZE = 32
STEPS = 40  # control ticks per episode (50 Hz)


def square_frame(goal: np.ndarray) -> np.ndarray:
    """A dark (SIZE, SIZE, 3) frame with a 4 x 4 bright square where goal x, y in [-1, 1] put it."""
    frame = np.full((SIZE, SIZE, 3), 20, np.uint8)
    row, col = (np.clip((goal[:2] + 1.0) / 2.0, 0, 1) * (SIZE - 4)).round().astype(int)
    frame[row:row + 4, col:col + 4] = (230, 40, 40)
    return frame


def square_bag(path: Path, seed: int) -> np.ndarray:
    """An episode whose goal (published once, first) is drawn from ``seed`` and whose camera (12.5 Hz)
    shows it; returns the goal (3,)."""
    rng = np.random.default_rng(seed)
    goal = rng.uniform(-1.0, 1.0, 3)
    ticks = EPOCH + seed * 10**12 + 20_000_000 * np.arange(STEPS, dtype=np.int64)
    positions = np.cumsum(rng.normal(scale=0.01, size=(STEPS, 7)), axis=0)
    cam_times = ticks[0] + 80_000_000 * np.arange(STEPS // 4, dtype=np.int64)
    frames = np.stack([square_frame(goal)] * len(cam_times))
    rec = EpisodeRecording(list(NAMES), ticks, positions, np.zeros((STEPS, 7)), ticks[:1], goal[None, :],
                           list(NAMES), ticks, positions + 0.01, {"task": "reach the square", "success": True},
                           images={"front": ImageSeries("front_optical_frame", cam_times, frames)})
    bagio.write_episode_bag(path, rec)
    return goal


def camera_config(steps: int = 1, weight: float = 1.0, **train: object) -> ExperimentConfig:
    spec = ObservationSpec(tuple(NAMES), ("joint_positions", "image.front"), (image_feature("front", SIZE, SIZE),))
    policy = PolicyConfig(observation=spec, horizon=4, control_period_s=0.02, guided_fields=("image.front",),
                          hidden_dim=16, num_layers=1, basis_size=4, image_channels=(8, 8, 8), image_keypoints=4,
                          image_embed_dim=8, image_shift_pad=0)
    settings = {"steps": steps, "batch_size": 32, "lr": 3e-3, "checkpoint_every": 10_000, "val_every": 10_000,
                "log_every": 10_000, "val_fraction": 0.0, **train}
    if weight:
        settings = {"image_aux_feature": "goal", "image_aux_weight": weight, **settings}
    return ExperimentConfig(policy=policy, data=DataConfig(), train=TrainConfig(**settings))


@pytest.fixture(scope="module")
def bags(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("square_bags")
    goals = np.stack([square_bag(root / f"episode_{seed:04d}", seed) for seed in range(12)])
    return root, goals


def test_windows_hold_the_aux_feature_beside_the_observation(bags: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    root, goals = bags
    config = camera_config()
    windows = dataset.load_training_data(root, config.policy, config.data, cache_dir=tmp_path, progress=False,
                                         aux=aux_feature(config))
    assert windows.observations.shape[1] == 7  # the policy does not observe the goal
    assert windows.aux.shape == (len(windows), 3)
    np.testing.assert_array_equal(windows.aux, goals[windows.episode_index].astype(np.float32))
    cached = dataset.load_training_data(root, config.policy, config.data, cache_dir=tmp_path, progress=False,
                                        aux=aux_feature(config))  # the cache keeps it (and keys on it)
    assert cached.summary["cache"]["hit"] and np.array_equal(cached.aux, windows.aux)
    plain = dataset.load_training_data(root, config.policy, config.data, cache_dir=tmp_path, progress=False)
    assert not plain.summary["cache"]["hit"] and plain.aux.shape == (len(plain), 0)


def test_the_head_learns_where_the_square_is_and_resumes(bags: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """300 steps: the head reads the goal's x, y from the frame far better than the mean does (z, not in
    the image, stays at about its std); the checkpoint carries the head; a resume continues from it."""
    root, goals = bags
    config = camera_config(steps=300)
    result = train(root, config, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(result.checkpoint_path)
    assert ckpt.aux_state is not None and ckpt.aux_state["feature"] == "goal"
    windows = dataset.load_training_data(root, config.policy, config.data, cache_dir=tmp_path / "c", progress=False,
                                         aux=aux_feature(config))
    net = VelocityNet(config.policy)
    net.load_state_dict(ckpt.model_state)
    aux = AuxTarget(8, np.zeros(3), np.ones(3), 1.0, "goal")
    aux.load_state_dict(ckpt.aux_state["state"])
    obs_n = torch.tensor(ckpt.stats.normalize_obs(windows.observations), dtype=torch.float32)
    frames = torch.from_numpy(windows.window_frames("front", np.arange(len(windows))))
    xy = torch.tensor(windows.aux[:, :2])
    with torch.no_grad():
        read = aux.predict(aux.embedding(net.condition_input(obs_n, {"front": frames}), 7))[:, :2]
    rmse = float(torch.sqrt(torch.mean((read - xy) ** 2)))
    spread = float(np.sqrt(np.mean((goals[:, :2] - goals[:, :2].mean(axis=0)) ** 2)))
    assert rmse < 0.5 * spread, (rmse, spread)
    full = validation_rmse(net, aux, obs_n, lambda i: {"front": frames[i]}, torch.tensor(windows.aux))
    assert full > rmse * 0.9  # over x, y and z: z is not in the image

    resumed = train(root, camera_config(steps=310), tmp_path / "run", resume=result.checkpoint_path, progress=False)
    after = load_checkpoint(resumed.checkpoint_path)
    assert after.step == 310 and after.aux_state is not None
    moved = [not torch.equal(after.aux_state["state"][k], ckpt.aux_state["state"][k]) for k in ("head.weight", "head.bias")]
    assert all(moved)  # the same head trained on
    with pytest.raises(UsageError, match="trained with train.image_aux_feature 'goal'"):
        train(root, camera_config(steps=320, weight=0.0), tmp_path / "run", resume=resumed.checkpoint_path, progress=False)


def test_misconfigured_aux_feature_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match="set both"):
        TrainConfig(image_aux_feature="goal")
    with pytest.raises(ConfigError, match="set both"):
        TrainConfig(image_aux_weight=1.0)
    with pytest.raises(ConfigError, match="only for camera models"):
        ExperimentConfig(train=TrainConfig(image_aux_feature="goal", image_aux_weight=1.0))
    with pytest.raises(ConfigError, match="not a vector feature"):
        camera_config(image_aux_feature="joint_velocities")
    spec = ObservationSpec(tuple(NAMES), ("joint_positions", "goal", "image.front"), (image_feature("front", SIZE, SIZE),))
    observed = PolicyConfig(observation=spec, horizon=4, guided_fields=("image.front",))
    with pytest.raises(ConfigError, match="observes it already"):
        ExperimentConfig(policy=observed, train=TrainConfig(image_aux_feature="goal", image_aux_weight=1.0))
    assert aux_feature(camera_config(weight=0.0)) is None
    assert aux_feature(camera_config()) == goal_feature()


def test_a_value_that_barely_varies_is_scaled_like_a_tenth_of_the_largest() -> None:
    """The cube's height varies by 0.2 mm of settling: standardized by its own std its noise would weigh as
    much as the x, y the image shows; it is scaled by 10 % of the largest std instead."""
    aux = AuxTarget(8, np.array([0.5, 0.0, 0.3]), np.array([0.072, 0.148, 0.0002]), 1.0, "goal")
    np.testing.assert_allclose(aux.std.numpy(), [0.072, 0.148, 0.0148], rtol=1e-6)
    torch.nn.init.zeros_(aux.head.weight)
    torch.nn.init.zeros_(aux.head.bias)  # the head predicts the mean
    target = torch.tensor([[0.5, 0.0, 0.3 + 0.0002]])
    head_at_mean = aux.loss(torch.zeros(1, 8), target) - aux.loss(torch.zeros(1, 8), torch.tensor([[0.5, 0.0, 0.3]]))
    assert abs(float(head_at_mean)) < 1e-3  # 0.2 mm of height costs almost nothing


def test_frame_lag_picks_the_frame_in_force_or_older_within_the_episode() -> None:
    """train.image_lag_frames 1: about half the samples get the previous camera frame, none a frame of the
    episode before (the first window of an episode keeps its own first frame); 0 changes nothing."""
    from types import SimpleNamespace

    from flow_policy_ros.policy.aux_target import FrameLag

    episode = np.repeat([0, 1, 2], 8)  # 3 episodes of 8 windows, a new camera frame every 4 windows
    frame_index = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5])
    windows = SimpleNamespace(episode_index=episode, frame_index={"front": frame_index})
    train_index = torch.arange(len(episode))
    generator = torch.Generator().manual_seed(0)
    lag = FrameLag(1, windows, ("front",), train_index, torch.device("cpu"))
    batch = torch.arange(len(episode)).repeat(50)
    in_force = torch.from_numpy(frame_index)[batch]
    chosen = lag("front", in_force, batch, generator)
    first = torch.tensor([0, 2, 4])[torch.from_numpy(episode)[batch]]
    assert torch.all((chosen == in_force) | (chosen == in_force - 1)) and torch.all(chosen >= first)
    older = (chosen == in_force - 1).float()[in_force > first].mean()
    assert 0.4 < float(older) < 0.6
    none = FrameLag(0, windows, ("front",), train_index, torch.device("cpu"))
    assert torch.equal(none("front", in_force, batch, generator), in_force)
