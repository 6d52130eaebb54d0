"""Windowing of episodes: exact alignment on a synthetic ramp, padding, boundaries, sources, cache."""

from __future__ import annotations

from pathlib import Path

import jtc_bags
import numpy as np
import pytest

from flow_policy_ros.data.bag import write_episode_bag
from flow_policy_ros.data.recording import EpisodeRecording
from flow_policy_ros.policy import dataset
from flow_policy_ros.policy.config import IIWA_JOINT_NAMES, ConfigError, DataConfig, ExperimentConfig, PolicyConfig
from flow_policy_ros.policy.dataset import DatasetError, Windows, load_training_data, windows_from_recording

EPOCH = 1_700_000_000_000_000_000
PERIOD_NS = 20_000_000
TICKS = 10
H = 4
POLICY = PolicyConfig(horizon=H, control_period_s=0.02)
NAMES = list(IIWA_JOINT_NAMES)
REPO_ROOT = Path(__file__).resolve().parents[1]


def ramp_recording(offset: float = 0.0, command_jitter_ns: np.ndarray | None = None,
                   success: bool | None = True, scale: float = 1.0) -> EpisodeRecording:
    """Tick k: position[j] = 100 j + k, velocity = -position, command[j] = 1000 + 100 j + k (+ offset), all
    times ``scale`` (the directory tests use a scale that keeps the values physically possible)."""
    ticks = EPOCH + PERIOD_NS * np.arange(TICKS, dtype=np.int64)
    k = np.arange(TICKS, dtype=np.float64)[:, None]
    j = np.arange(7, dtype=np.float64)[None, :]
    positions = (offset + 100 * j + k) * scale
    jitter = np.zeros(TICKS, np.int64) if command_jitter_ns is None else command_jitter_ns
    return EpisodeRecording(
        joint_names=NAMES, joint_times_ns=ticks, positions=positions, velocities=-positions,
        goal_times_ns=ticks[[0, 5]], goals=[[1, 2, 3], [4, 5, 6]],
        command_joint_names=NAMES, command_times_ns=ticks + jitter, commands=1000 * scale + positions,
        metadata={} if success is None else {"success": success},
    )


def expected_goal(k: int) -> list[float]:
    return [1, 2, 3] if k < 5 else [4, 5, 6]


def test_observation_k_pairs_with_commands_k_to_k_plus_h_minus_1() -> None:
    rec = ramp_recording()
    w = windows_from_recording(rec, POLICY, DataConfig())
    assert w.observations.shape == (TICKS, 17) and w.actions.shape == (TICKS, H, 7)
    assert w.observations.dtype == np.float32 and w.actions.dtype == np.float32
    for k in range(TICKS):
        np.testing.assert_array_equal(
            w.observations[k], np.concatenate([rec.positions[k], rec.velocities[k], expected_goal(k)]))
        steps = [min(k + i, TICKS - 1) for i in range(H)]
        np.testing.assert_array_equal(w.actions[k], rec.commands[steps])


def test_end_of_episode_repeats_the_last_action() -> None:
    rec = ramp_recording()
    w = windows_from_recording(rec, POLICY, DataConfig())
    np.testing.assert_array_equal(w.actions[-2], rec.commands[[8, 9, 9, 9]])
    np.testing.assert_array_equal(w.actions[-1], np.repeat(rec.commands[-1:], H, axis=0))


def test_command_jitter_below_half_a_period_keeps_ticks() -> None:
    jitter = np.random.default_rng(0).integers(-0.4 * PERIOD_NS, 0.4 * PERIOD_NS, size=TICKS)
    jitter[0] = 0  # the grid starts at the first command
    clean = windows_from_recording(ramp_recording(), POLICY, DataConfig())
    jittered = windows_from_recording(ramp_recording(command_jitter_ns=jitter), POLICY, DataConfig())
    np.testing.assert_array_equal(jittered.actions, clean.actions)
    np.testing.assert_array_equal(jittered.observations, clean.observations)


def test_actions_follow_the_config_joint_order() -> None:
    policy = PolicyConfig(horizon=H, control_period_s=0.02, action_joint_names=NAMES[::-1])
    rec = ramp_recording()
    w = windows_from_recording(rec, policy, DataConfig())
    np.testing.assert_array_equal(w.actions[0, 0], rec.commands[0, ::-1])


def test_action_source_joint_states_uses_the_next_measured_position() -> None:
    rec = ramp_recording()
    w = windows_from_recording(rec, POLICY, DataConfig(action_source="joint_states"))
    assert len(w) == TICKS - 1
    for k in range(TICKS - 1):
        steps = [min(k + 1 + i, TICKS - 1) for i in range(H)]
        np.testing.assert_array_equal(w.actions[k], rec.positions[steps])


def test_ticks_without_a_goal_start_no_window() -> None:
    rec = ramp_recording()
    rec.goal_times_ns = rec.goal_times_ns + 2 * PERIOD_NS  # first goal arrives at tick 2
    w = windows_from_recording(rec, POLICY, DataConfig())
    assert len(w) == TICKS - 2
    np.testing.assert_array_equal(w.actions[0], rec.commands[2:2 + H])


def test_missing_action_joint_is_named() -> None:
    policy = PolicyConfig(horizon=H, action_joint_names=[*NAMES[:6], "gripper"], action_frame="absolute")
    with pytest.raises(DatasetError, match="commands lacks joint.*gripper"):
        windows_from_recording(ramp_recording(), policy, DataConfig())


#: Scale of the directory episodes: positions below 2.1 rad, commands within the limits (+0.5 rad).
SCALE = 1e-4


@pytest.fixture
def episode_dir(tmp_path: Path) -> Path:
    root = tmp_path / "episodes"
    write_episode_bag(root / "ep_000", ramp_recording(offset=0.0, scale=SCALE), "mcap")
    write_episode_bag(root / "ep_001", ramp_recording(offset=10_000.0, scale=SCALE), "sqlite3")
    write_episode_bag(root / "ep_002", ramp_recording(offset=20_000.0, success=False, scale=SCALE), "mcap")
    return root


def test_directory_windows_never_cross_episodes(episode_dir: Path, tmp_path: Path) -> None:
    w = load_training_data(episode_dir, POLICY, DataConfig(), cache_dir=tmp_path / "cache", progress=False)
    assert w.summary["sources"] == ["ep_000", "ep_001"]
    assert w.summary["success"] == [True, True]
    assert w.summary["skipped_failures"] == 1 and w.summary["skipped_sources"] == ["ep_002"]
    np.testing.assert_array_equal(w.episode_index, np.repeat([0, 1], TICKS))
    for index, offset in ((0, 0.0), (1, 10_000.0)):
        acts = w.actions[w.episode_index == index]
        # only its own commands: [1000 + offset, 1609 + offset] * SCALE, the other episode's are 1.0 rad away
        assert acts.min() >= (1000 + offset) * SCALE - 1e-6 and acts.max() <= (1609 + offset) * SCALE + 1e-6
        np.testing.assert_array_equal(acts[-1], np.repeat(acts[-1, :1], H, axis=0))


def test_failures_can_be_included(episode_dir: Path, tmp_path: Path) -> None:
    w = load_training_data(episode_dir, POLICY, DataConfig(), cache_dir=tmp_path / "cache",
                           include_failures=True, progress=False)
    assert w.summary["episodes"] == 3 and w.summary["success"] == [True, True, False]
    assert len(w) == 3 * TICKS


def test_second_load_is_a_cache_hit(episode_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = load_training_data(episode_dir, POLICY, DataConfig(), cache_dir=cache, progress=False)
    assert first.summary["cache"]["hit"] is False

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("bags were read despite a valid cache")

    monkeypatch.setattr(dataset, "read_episode_bag", no_reading)
    second = load_training_data(episode_dir, POLICY, DataConfig(), cache_dir=cache, progress=False)
    assert second.summary["cache"]["hit"] is True
    np.testing.assert_array_equal(second.observations, first.observations)
    np.testing.assert_array_equal(second.actions, first.actions)
    np.testing.assert_array_equal(second.episode_index, first.episode_index)
    with pytest.raises(AssertionError, match="despite"):  # another horizon is another cache entry
        load_training_data(episode_dir, PolicyConfig(horizon=H + 1), DataConfig(), cache_dir=cache, progress=False)


def test_npz_round_trip_and_shape_check(tmp_path: Path) -> None:
    w = windows_from_recording(ramp_recording(), POLICY, DataConfig(), source="ep")
    file = tmp_path / "windows.npz"
    w.save_npz(file)
    back = load_training_data(file, POLICY, DataConfig())
    np.testing.assert_array_equal(back.actions, w.actions)
    assert {k: back.summary[k] for k in w.summary} == w.summary
    assert back.summary["observation_range"]["low"] == w.observations.min(axis=0).tolist()  # added on load
    with pytest.raises(DatasetError, match=r"windows.npz: actions have shape \(10, 4, 7\), expected \(N, 5, 7\)"):
        load_training_data(file, PolicyConfig(horizon=5), DataConfig())


def test_plain_npz_without_episode_index(tmp_path: Path) -> None:
    file = tmp_path / "plain.npz"
    np.savez(file, observations=np.zeros((3, 17)), actions=np.zeros((3, H, 7)))
    w = load_training_data(file, POLICY, DataConfig())
    assert isinstance(w, Windows) and w.episode_index.tolist() == [0, 0, 0]


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such training data"):
        load_training_data(tmp_path / "nope", POLICY, DataConfig())
    with pytest.raises(DatasetError, match="no rosbag2 episodes"):
        load_training_data(tmp_path, POLICY, DataConfig(), cache_dir=tmp_path / "cache", progress=False)


def test_missing_velocities_fail_only_when_the_observation_needs_them() -> None:
    rec = ramp_recording()
    rec.velocities[:] = np.nan  # what bag.py reads from a driver that publishes no velocities
    with pytest.raises(DatasetError, match="needs joint_velocities but joint_states messages carry none"):
        windows_from_recording(rec, PolicyConfig(horizon=H), DataConfig())
    positions_only = PolicyConfig(horizon=H, observation={"fields": ["joint_positions", "goal"]})
    windows = windows_from_recording(rec, positions_only, DataConfig())
    assert np.isfinite(windows.observations).all() and len(windows) > 0


# --------------------------------------------------------------------------- values no robot records


def _tree_hash(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("edit, fragment", [
    (lambda r: r.positions.__setitem__((3, 1), np.nan), "position of lbr_iiwa_joint_2 is nan rad (non-finite) at sample 3"),
    (lambda r: r.positions.__setitem__((0, 4), 1e6), "position of lbr_iiwa_joint_5 is 1000000.0 rad (beyond ±2π"),
    (lambda r: r.positions.__setitem__((2, 3), 2.7), "position of lbr_iiwa_joint_4 is 2.7 rad (beyond the joint limits by more"),
    (lambda r: r.velocities.__setitem__((1, 0), np.inf), "velocity of lbr_iiwa_joint_1 is inf rad/s"),
    (lambda r: r.goals.__setitem__((0, 2), np.nan), "goal of z is nan m"),
    (lambda r: r.commands.__setitem__((5, 6), -7.0), "command of lbr_iiwa_joint_7 is -7.0 rad (beyond ±2π"),
])
def test_impossible_values_are_a_one_line_error_naming_the_bag(tmp_path: Path, edit, fragment) -> None:
    root = tmp_path / "episodes"
    write_episode_bag(root / "ep_000", ramp_recording(scale=SCALE), "mcap")
    bad = ramp_recording(scale=SCALE)
    edit(bad)
    write_episode_bag(root / "ep_001", bad, "mcap")
    before = _tree_hash(root)
    with pytest.raises(DatasetError) as info:
        load_training_data(root, POLICY, DataConfig(), cache_dir=tmp_path / "cache", progress=False)
    message = str(info.value)
    assert message.startswith(str(root / "ep_001")) and fragment in message and len(message.splitlines()) == 1, message
    assert _tree_hash(root) == before  # inputs are never modified
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.npz"))


def test_npz_with_nan_is_a_one_line_error(tmp_path: Path) -> None:
    file = tmp_path / "nan.npz"
    obs = np.zeros((3, 17))
    obs[1, 5] = np.nan
    np.savez(file, observations=obs, actions=np.zeros((3, H, 7)))
    with pytest.raises(DatasetError, match=r"nan.npz: observations has 1 NaN/inf value\(s\), the first at index \(1, 5\)"):
        load_training_data(file, POLICY, DataConfig())


def test_summary_records_the_training_range(episode_dir: Path, tmp_path: Path) -> None:
    w = load_training_data(episode_dir, POLICY, DataConfig(), cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(w.summary["observation_range"]["low"], w.observations.min(axis=0))
    np.testing.assert_array_equal(w.summary["observation_range"]["high"], w.observations.max(axis=0))
    cached = load_training_data(episode_dir, POLICY, DataConfig(), cache_dir=tmp_path / "cache", progress=False)
    assert cached.summary["cache"]["hit"] and cached.summary["observation_range"] == w.summary["observation_range"]


# --------------------------------------------------------------------------- JointTrajectoryController sources

JTC_POLICY = PolicyConfig(horizon=H, control_period_s=0.02)
JTC_SOURCES = {
    "commands": DataConfig(),
    "joint_trajectory": DataConfig(action_source="joint_trajectory"),
    "controller_state": DataConfig(action_source="controller_state"),
}


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_jtc_sources_train_the_same_windows_as_per_tick_commands(tmp_path: Path, storage: str) -> None:
    """JointTrajectory chunks (replaced mid-chunk, joints shuffled, some stamps zero) and the JTC's
    controller state give exactly the windows of the Float64MultiArray commands the robot executed."""
    episode = jtc_bags.make_episode(seed=4)
    windows = {}
    for source, cfg in JTC_SOURCES.items():
        jtc_bags.write_episode(tmp_path / source / "ep", episode, source, storage)
        windows[source] = dataset.windows_from_directory(tmp_path / source, JTC_POLICY, cfg, progress=False)
    reference = windows["commands"]
    assert len(reference) == len(episode.commands) == 36
    np.testing.assert_array_equal(reference.actions[:, 0], episode.commands.astype(np.float32))
    for source in ("joint_trajectory", "controller_state"):
        w = windows[source]
        assert w.summary["action_source"] == source
        np.testing.assert_array_equal(w.observations, reference.observations)
        np.testing.assert_allclose(w.actions, reference.actions, rtol=0, atol=1e-7)


def test_jtc_source_actions_follow_the_config_joint_order(tmp_path: Path) -> None:
    episode = jtc_bags.make_episode(seed=1)
    jtc_bags.write_episode(tmp_path / "jt" / "ep", episode, "joint_trajectory")
    policy = PolicyConfig(horizon=H, control_period_s=0.02, action_joint_names=NAMES[::-1])
    w = dataset.windows_from_directory(tmp_path / "jt", policy, JTC_SOURCES["joint_trajectory"], progress=False)
    np.testing.assert_allclose(w.actions[:, 0], episode.commands[:, ::-1], rtol=0, atol=1e-7)


def test_jtc_source_configs_load(tmp_path: Path) -> None:
    cfg = ExperimentConfig.from_yaml(REPO_ROOT / "config" / "train_reach_jtc.yaml")
    assert cfg.data.action_source == "joint_trajectory"
    assert cfg.data.trajectory_topic == jtc_bags.JTC_TOPIC
    assert cfg.data.controller_state_topic == jtc_bags.STATE_TOPIC
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  action_source: trajectory\n")
    with pytest.raises(ConfigError, match="data.action_source must be one of .*'joint_trajectory'.*got 'trajectory'"):
        ExperimentConfig.from_yaml(bad)


def test_non_finite_trajectory_point_is_a_one_line_error(tmp_path: Path) -> None:
    episode = jtc_bags.make_episode(seed=2)
    episode.chunks[3].positions[2, 5] = np.nan
    jtc_bags.write_episode(tmp_path / "jt" / "ep", episode, "joint_trajectory")
    at = jtc_bags.tick_ns(episode.chunks[3].start_tick + 3)  # point 2 applies 3 periods after the stamp
    with pytest.raises(DatasetError, match=rf"ep: target of lbr_iiwa_joint_6 is nan rad \(non-finite\) at {at} ns"):
        dataset.windows_from_directory(tmp_path / "jt", POLICY, JTC_SOURCES["joint_trajectory"], progress=False)


def test_a_new_vector_feature_flows_from_its_topic_into_the_windows(tmp_path: Path) -> None:
    """A model observing a vector other than the goal (here a 2-value Float64MultiArray 'force' on
    /force, no goal): training windows and replay read it from its topic by the spec, held per tick."""
    from flow_policy_ros.contract import FeatureSpec, ObservationSpec
    from flow_policy_ros.data import bag as bagio
    from flow_policy_ros.data.replay_source import read_source
    from flow_policy_ros.data.windows import observations_at

    force = FeatureSpec("force", "vector", "force", "std_msgs/msg/Float64MultiArray", None, 2, ("fx", "fy"))
    policy = PolicyConfig(horizon=H, control_period_s=0.02, guided_fields=("force",),
                          observation=ObservationSpec(NAMES, ("joint_positions", "force"), (force,)))
    rec = ramp_recording(scale=SCALE)
    path = tmp_path / "ep"
    with bagio.BagWriter(path, "mcap") as bag:
        for t, pos, vel in zip(rec.joint_times_ns, rec.positions, rec.velocities):
            bag.write("/joint_states", bagio.JOINT_STATE, bagio.joint_state_msg(t, NAMES, pos, vel), t)
        for t, value in ((rec.joint_times_ns[0], [0.5, -0.5]), (rec.joint_times_ns[4], [1.5, 2.5])):
            bag.write("/force", bagio.FLOAT64_MULTI_ARRAY, bagio.float64_multi_array_msg(np.array(value)), t)
        for t, cmd in zip(rec.command_times_ns, rec.commands):
            bag.write("/commands", bagio.FLOAT64_MULTI_ARRAY, bagio.float64_multi_array_msg(cmd), t)
    w = load_training_data(path, policy, DataConfig(), cache_dir=tmp_path / "cache", progress=False)
    assert w.observations.shape == (TICKS, 9)
    np.testing.assert_array_equal(w.observations[:, 7:], [[0.5, -0.5]] * 4 + [[1.5, 2.5]] * 6)
    np.testing.assert_allclose(w.observations[:, :7], rec.positions, rtol=1e-6)
    with pytest.raises(DatasetError, match="no 'force' messages"):  # the goal recording has none
        observations_at(rec, rec.joint_times_ns, policy.io)
    from flow_policy_ros.runtime.metadata import PolicyMetadata

    meta = PolicyMetadata(name="m", io=policy.io, solver_steps=1)
    src = read_source(path, meta)
    times, values = src.recording.vector_series("force")
    np.testing.assert_array_equal(values, [[0.5, -0.5], [1.5, 2.5]])
