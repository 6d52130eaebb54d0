"""LeRobotDataset v3.0 writer/reader and the rosbag2 ⇄ v3 converter: exact round trips, the
resampling rule, file roll-over, statistics, and every bad-input case as one line with exit 2."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flow_policy_ros.cli import main
from flow_policy_ros.data import bag as bagio
from flow_policy_ros.data.config import DataConfig
from flow_policy_ros.data.lerobot import (
    DEFAULT_FEATURES,
    QUANTILE_BINS,
    QUANTILES,
    STAT_KEYS,
    LeRobotWriter,
    episode_stats,
    vector_feature,
)
from flow_policy_ros.data.lerobot_convert import (
    LeRobotMapping,
    bag_frames,
    bags_to_lerobot,
    lerobot_to_bags,
    load_mapping,
)
from flow_policy_ros.data.lerobot_reader import name_aliases, read_dataset, state_joint_names
from flow_policy_ros.data.recording import EpisodeRecording
from flow_policy_ros.errors import DatasetError

REPO = Path(__file__).resolve().parents[1]
EPOCH = 1_700_000_000_000_000_000
DT = 20_000_000  # ns, 50 Hz
NAMES = [f"lbr_iiwa_joint_{i}" for i in range(1, 8)]
POS_NAMES = [f"{n}.pos" for n in NAMES]  # ObservationSpec.state_names(): the one naming convention
JTC_TOPIC = "/joint_trajectory_controller/joint_trajectory"
OBSERVATION = {"joint_names": NAMES, "fields": ["joint_positions", "goal"]}
MAPPING = LeRobotMapping(observation=OBSERVATION)
JTC_MAPPING = LeRobotMapping(observation=OBSERVATION, data=DataConfig(action_source="joint_trajectory"))


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def episode_bag(path: Path, seed: int, steps: int = 30, action_source: str = "commands",
                shuffle: bool = False) -> EpisodeRecording:
    """An episode on the 50 Hz grid (joint states, goal at t_0 and halfway, one command per tick).

    ``action_source='joint_trajectory'`` writes each command as a one-point JointTrajectory
    stamped at its tick reaching the target one period later. ``shuffle`` publishes the joints
    in another order in every message.
    """
    rng = np.random.default_rng(seed)
    ticks = EPOCH + seed * 10**12 + DT * np.arange(steps, dtype=np.int64)
    positions = np.cumsum(rng.normal(scale=0.01, size=(steps, 7)), axis=0)
    rec = EpisodeRecording(
        joint_names=list(NAMES), joint_times_ns=ticks, positions=positions, velocities=rng.normal(size=(steps, 7)),
        goal_times_ns=ticks[[0, steps // 2]], goals=rng.normal(size=(2, 3)),
        command_joint_names=list(NAMES), command_times_ns=ticks, commands=positions + 0.01,
        metadata={"task": f"reach {seed % 2}", "seed": seed},
    )
    if action_source == "commands" and not shuffle:
        bagio.write_episode_bag(path, rec)
        return rec
    with bagio.BagWriter(path) as out:
        for k, t in enumerate(ticks):
            order = rng.permutation(7) if shuffle else np.arange(7)
            names = [NAMES[i] for i in order]
            out.write("/joint_states", bagio.JOINT_STATE,
                      bagio.joint_state_msg(t, names, positions[k, order], rec.velocities[k, order]), t)
            if t in rec.goal_times_ns:
                out.write("/goal", bagio.POINT_STAMPED, bagio.point_stamped_msg(t, rec.goals[list(rec.goal_times_ns).index(t)]), t)
            if action_source == "commands":
                out.write("/commands", bagio.FLOAT64_MULTI_ARRAY, bagio.float64_multi_array_msg(rec.commands[k]), t)
            else:
                msg = bagio.joint_trajectory_msg(t, names, rec.commands[k:k + 1, order], 0.02, times_from_start_ns=[DT])
                out.write(JTC_TOPIC, bagio.JOINT_TRAJECTORY, msg, t)
        (out.directory / bagio.EPISODE_JSON).write_text(json.dumps(rec.metadata))
    return rec


def make_bags(root: Path, count: int = 3, **kwargs: object) -> tuple[list[Path], list[EpisodeRecording]]:
    bags = [root / f"ep{i}" for i in range(count)]
    recs = [episode_bag(b, seed=i, steps=30 + 5 * i, **kwargs) for i, b in enumerate(bags)]  # type: ignore[arg-type]
    return bags, recs


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("mapping", [MAPPING, JTC_MAPPING], ids=["commands", "joint_trajectory"])
def test_bag_to_lerobot_to_bag_reproduces_positions_and_grid(tmp_path: Path, mapping: LeRobotMapping) -> None:
    source = mapping.data.action_source
    bags, recs = make_bags(tmp_path / "bags", action_source=source, shuffle=source == "joint_trajectory")
    summary = bags_to_lerobot(bags, tmp_path / "ds", mapping)
    assert summary["episodes"] == 3 and summary["frames"] == 30 + 35 + 40 and summary["gaps"] == {}
    ds = read_dataset(tmp_path / "ds")
    assert ds.feature_names("observation.state") == POS_NAMES + ["goal.x", "goal.y", "goal.z"]
    assert ds.feature_names("action") == NAMES and ds.tasks == ["reach 0", "reach 1"]
    for ep, rec in zip(ds.iter_episodes(), recs):
        np.testing.assert_array_equal(ep.columns["observation.state"][:, :7], rec.positions.astype(np.float32))
        np.testing.assert_array_equal(ep.columns["action"], rec.commands.astype(np.float32))
        np.testing.assert_array_equal(ep.columns["timestamp"], (np.arange(ep.length) * 0.02).astype(np.float32))
    out = lerobot_to_bags(tmp_path / "ds", tmp_path / "again", mapping)
    assert [p.name for p in out] == ["episode_000000", "episode_000001", "episode_000002"]
    for path, rec in zip(out, recs):
        back = bagio.read_episode_bag(path, mapping.data)
        assert back.joint_names == NAMES
        # exactly the recorded positions (stored as float32 in the dataset)
        np.testing.assert_array_equal(back.positions, rec.positions.astype(np.float32).astype(np.float64))
        grid = rec.joint_times_ns - rec.joint_times_ns[0]
        assert np.abs((back.joint_times_ns - back.joint_times_ns[0]) - grid).max() <= 1_000  # ns
        assert back.joint_times_ns[0] == mapping.start_time_ns
        assert json.loads((path / bagio.EPISODE_JSON).read_text())["task"] == rec.metadata["task"]
        frames = bag_frames(path, mapping)  # and the bag maps back onto the same frames
        np.testing.assert_array_equal(frames.action, rec.commands.astype(np.float32).astype(np.float64))


def write_dataset(root: Path, episodes: int = 3, seed: int = 0, **kwargs: object) -> None:
    """A dataset written straight from arrays: 7 joints + goal state, 7-joint action, 50 fps."""
    rng = np.random.default_rng(seed)
    features = {"observation.state": vector_feature(POS_NAMES + ["goal.x", "goal.y", "goal.z"]),
                "action": vector_feature(NAMES)}
    with LeRobotWriter(root, 50, features, **kwargs) as writer:  # type: ignore[arg-type]
        for e in range(episodes):
            n = 20 + 7 * e
            goal = np.repeat(rng.normal(size=(2, 3)), [n // 3, n - n // 3], axis=0)
            state = np.concatenate([rng.normal(size=(n, 7)), goal], axis=1)
            writer.add_episode({"observation.state": state, "action": rng.normal(size=(n, 7))}, task=f"task {e % 2}")


@pytest.mark.parametrize("mapping", [MAPPING, JTC_MAPPING], ids=["commands", "joint_trajectory"])
def test_lerobot_to_bag_to_lerobot_reproduces_parquet_columns(tmp_path: Path, mapping: LeRobotMapping) -> None:
    write_dataset(tmp_path / "ds")
    bags = lerobot_to_bags(tmp_path / "ds", tmp_path / "bags", mapping)
    bags_to_lerobot(bags, tmp_path / "ds2", mapping)
    for rel in ("data/chunk-000/file-000.parquet", "meta/tasks.parquet"):
        a, b = pq.read_table(tmp_path / "ds" / rel), pq.read_table(tmp_path / "ds2" / rel)
        assert a.column_names == b.column_names and a.equals(b), rel
    a = pq.read_table(tmp_path / "ds" / "meta/episodes/chunk-000/file-000.parquet")
    b = pq.read_table(tmp_path / "ds2" / "meta/episodes/chunk-000/file-000.parquet")
    assert a.equals(b)
    assert json.loads((tmp_path / "ds/meta/stats.json").read_text()) == json.loads((tmp_path / "ds2/meta/stats.json").read_text())
    info1, info2 = (json.loads((tmp_path / d / "meta/info.json").read_text()) for d in ("ds", "ds2"))
    assert info1 == {**info2, "robot_type": info1["robot_type"]}


LEROBOT_FIXTURE = REPO / "test/fixtures/lerobot_v30_by_lerobot_0.6.1"  # see its .md beside it


@pytest.mark.parametrize("mapping", [MAPPING, JTC_MAPPING], ids=["commands", "joint_trajectory"])
def test_dataset_written_by_lerobot_converts_to_bags_and_back(tmp_path: Path, mapping: LeRobotMapping) -> None:
    """LeRobot's own writer's files: read, converted to bags and back to the same parquet columns and stats."""
    before = tree_digest(LEROBOT_FIXTURE)
    ds = read_dataset(LEROBOT_FIXTURE)
    assert ds.tasks == ["lerobot task 0", "lerobot task 1"] and [e["length"] for e in ds.episodes] == [25, 30]
    bags = lerobot_to_bags(LEROBOT_FIXTURE, tmp_path / "bags", mapping)
    bags_to_lerobot(bags, tmp_path / "ds", mapping)
    theirs = pq.read_table(LEROBOT_FIXTURE / "data/chunk-000/file-000.parquet")
    ours = pq.read_table(tmp_path / "ds/data/chunk-000/file-000.parquet")
    assert theirs.schema.equals(ours.schema) and theirs.equals(ours)  # metadata aside (theirs has a fingerprint)
    rel = "meta/episodes/chunk-000/file-000.parquet"
    theirs_eps, ours_eps = pq.read_table(LEROBOT_FIXTURE / rel), pq.read_table(tmp_path / "ds" / rel)
    assert theirs_eps.schema.equals(ours_eps.schema)
    for name in theirs_eps.column_names:
        if name.startswith("stats/"):
            # LeRobot accumulates float32 features in float32: its std of the constant goal is
            # sqrt(E[x²] − E[x]²) ≈ 6e-4, not 0 (ours, in float64)
            atol = 1e-3 if name.endswith("/std") else 1e-5
            np.testing.assert_allclose(np.array(ours_eps[name].to_pylist(), float), np.array(theirs_eps[name].to_pylist(), float),
                                       rtol=0, atol=atol, err_msg=name)
        else:
            assert ours_eps[name].equals(theirs_eps[name]), name
    stats = json.loads((tmp_path / "ds/meta/stats.json").read_text())
    for feature, feature_stats in ds.stats.items():
        for key, value in feature_stats.items():
            atol = 1e-3 if key == "std" else 1e-5
            np.testing.assert_allclose(stats[feature][key], value, rtol=0, atol=atol, err_msg=f"{feature}/{key}")
    assert pq.read_table(tmp_path / "ds/meta/tasks.parquet").equals(pq.read_table(LEROBOT_FIXTURE / "meta/tasks.parquet"))
    # the fixture names positions bare ('lbr_iiwa_joint_1'); ours are ObservationSpec.state_names()
    assert ds.feature_names("observation.state")[:7] == NAMES
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["features"]["observation.state"]["names"] == POS_NAMES + ["goal.x", "goal.y", "goal.z"]
    info["features"]["observation.state"]["names"] = ds.feature_names("observation.state")
    assert info == ds.info
    assert tree_digest(LEROBOT_FIXTURE) == before


# --------------------------------------------------------------------------- format


def test_info_episodes_tasks_and_stats_follow_lerobot_v3(tmp_path: Path) -> None:
    write_dataset(tmp_path / "ds")
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 50
    assert list(info["features"]) == ["observation.state", "action", *DEFAULT_FEATURES]
    assert info["features"]["observation.state"] == {"dtype": "float32", "shape": [10],
                                                     "names": POS_NAMES + ["goal.x", "goal.y", "goal.z"]}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 20 + 27 + 34, 2)
    assert info["splits"] == {"train": "0:3"} and info["video_path"] is None
    data = pq.read_table(tmp_path / "ds/data/chunk-000/file-000.parquet")
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), 10)
    assert data.schema.field("timestamp").type == pa.float32() and data.schema.field("index").type == pa.int64()
    assert pq.ParquetFile(tmp_path / "ds/data/chunk-000/file-000.parquet").num_row_groups == 3  # one per episode
    episodes = pq.read_table(tmp_path / "ds/meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == [(0, 20), (20, 47), (47, 81)]
    assert episodes[1]["tasks"] == ["task 1"] and episodes[1]["data/file_index"] == 0
    assert {f"stats/action/{k}" for k in STAT_KEYS} <= set(episodes[0])
    tasks = pq.read_table(tmp_path / "ds/meta/tasks.parquet")
    assert tasks.column_names == ["task_index", "task"] and tasks.column("task").to_pylist() == ["task 0", "task 1"]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    stats = json.loads((tmp_path / "ds/meta/stats.json").read_text())
    assert set(stats) == set(info["features"]) and set(stats["action"]) == set(STAT_KEYS)
    assert set(QUANTILES) == {"q01", "q10", "q50", "q90", "q99"}
    actions = np.concatenate([ep.columns["action"] for ep in read_dataset(tmp_path / "ds").iter_episodes()])
    np.testing.assert_allclose(stats["action"]["mean"], actions.astype(np.float64).mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats["action"]["std"], actions.astype(np.float64).std(axis=0), rtol=0, atol=1e-12)
    assert stats["action"]["min"] == actions.min(axis=0).tolist() and stats["action"]["count"] == [81]
    assert stats["index"]["max"] == [80.0]


def test_quantiles_are_read_from_a_histogram_like_lerobots() -> None:
    """Within one bin of the exact quantile on a fine uniform sample; one frame gives its value."""
    x = np.random.default_rng(0).uniform(-2.0, 3.0, size=(20_000, 2))
    stats = episode_stats(x)
    for key, q in QUANTILES.items():
        np.testing.assert_allclose(stats[key], np.quantile(x, q, axis=0), rtol=0, atol=5.0 / QUANTILE_BINS + 1e-3)
    assert stats["q01"][0] < stats["q10"][0] < stats["q50"][0] < stats["q90"][0] < stats["q99"][0]
    one = episode_stats(np.array([[1.5, -2.0]]))
    assert all(one[key].tolist() == [1.5, -2.0] for key in QUANTILES) and one["std"].tolist() == [0.0, 0.0]


def test_files_roll_over_by_size_and_chunk(tmp_path: Path) -> None:
    """A tiny size limit puts every episode in its own file; chunks_size 2 moves the third to chunk-001."""
    write_dataset(tmp_path / "ds", episodes=3, data_files_size_in_mb=1e-6, chunks_size=2)
    files = sorted(str(p.relative_to(tmp_path / "ds")) for p in (tmp_path / "ds/data").rglob("*.parquet"))
    assert files == ["data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet",
                     "data/chunk-001/file-000.parquet"]
    ds = read_dataset(tmp_path / "ds")
    assert [(e["data/chunk_index"], e["data/file_index"]) for e in ds.episodes] == [(0, 0), (0, 1), (1, 0)]
    assert [ep.length for ep in ds.iter_episodes()] == [20, 27, 34]


def test_writer_failure_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="declared shape"):
        with LeRobotWriter(tmp_path / "ds", 50, {"action": vector_feature(NAMES)}) as writer:
            writer.add_episode({"action": np.zeros((5, 6))}, task="t")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- resampling rule


def test_frame_k_is_the_training_tick(tmp_path: Path) -> None:
    """Off-grid joint states are interpolated at t_k; t_0 is the first command's stamp, a later command
    4 ms late still lands on its tick; a dropped command repeats the previous one; the gap is reported."""
    t0 = EPOCH
    ticks = t0 + DT * np.arange(10, dtype=np.int64)
    positions = np.arange(20 * 7, dtype=np.float64).reshape(20, 7)
    js_times = t0 - 5_000_000 + 10_000_000 * np.arange(20, dtype=np.int64)  # 100 Hz, 5 ms before the ticks
    cmd_keep = np.array([k for k in range(10) if k != 6])
    rec = EpisodeRecording(list(NAMES), js_times, positions, np.zeros((20, 7)), ticks[:1], np.ones((1, 3)),
                           list(NAMES), ticks[cmd_keep] + np.where(cmd_keep > 0, 4_000_000, 0), 100.0 + cmd_keep[:, None] * np.ones((1, 7)),
                           {"task": "t"})
    bagio.write_episode_bag(tmp_path / "bag", rec)
    frames = bag_frames(tmp_path / "bag", MAPPING)
    k = np.arange(len(frames.ticks_ns))
    np.testing.assert_array_equal(frames.ticks_ns, ticks[: len(k)])
    # positions at t_k: halfway between the samples 5 ms either side
    np.testing.assert_allclose(frames.state[:, :7], 0.5 * (positions[2 * k] + positions[2 * k + 1]), rtol=0, atol=1e-12)
    expected = np.where(k == 6, 5, k)
    np.testing.assert_array_equal(frames.action[:, 0], 100.0 + expected)
    assert frames.gaps["/commands"] == {"count": 1, "longest_s": pytest.approx(0.04)}
    np.testing.assert_array_equal(frames.state[:, 7:], np.ones((len(k), 3)))


@pytest.mark.parametrize("source", ["commands", "joint_trajectory", "controller_state"])
def test_frames_are_the_training_windows(tmp_path: Path, source: str) -> None:
    """Frame k's observation and action are training window k's observation and first action, for
    each action source (JTC chunks replaced mid-chunk with shuffled joints and zero stamps, the
    controller's reference at 100 Hz, joint states at 100 Hz off the ticks: test/jtc_bags.py)."""
    import jtc_bags

    from flow_policy_ros.policy import dataset
    from flow_policy_ros.policy.config import PolicyConfig

    episode = jtc_bags.make_episode(seed=3)
    jtc_bags.write_episode(tmp_path / "bags" / "ep", episode, source)
    cfg = DataConfig(action_source=source)
    windows = dataset.windows_from_directory(tmp_path / "bags", PolicyConfig(horizon=4, control_period_s=0.02), cfg,
                                             progress=False)
    mapping = LeRobotMapping(task="reach", data=cfg, observation={
        "joint_names": NAMES, "fields": ["joint_positions", "joint_velocities", "goal"]})
    bags_to_lerobot([tmp_path / "bags" / "ep"], tmp_path / "ds", mapping)
    (ep,) = read_dataset(tmp_path / "ds").iter_episodes()
    assert ep.length == len(windows) == len(episode.commands)
    np.testing.assert_array_equal(ep.columns["observation.state"], windows.observations)
    np.testing.assert_array_equal(ep.columns["action"], windows.actions[:, 0])


def test_stamps_going_back_name_bag_topic_and_message(tmp_path: Path) -> None:
    """Header stamps (not the log times, which the bag keeps in order) that go back are refused."""
    with bagio.BagWriter(tmp_path / "bag") as out:
        for k, stamp in enumerate([0, 1, 3, 2, 4]):
            t = EPOCH + DT * k
            out.write("/joint_states", bagio.JOINT_STATE, bagio.joint_state_msg(EPOCH + DT * stamp, NAMES, np.zeros(7), np.zeros(7)), t)
            out.write("/commands", bagio.FLOAT64_MULTI_ARRAY, bagio.float64_multi_array_msg(np.zeros(7)), t)
        out.write("/goal", bagio.POINT_STAMPED, bagio.point_stamped_msg(EPOCH, np.zeros(3)), EPOCH)
        (out.directory / bagio.EPISODE_JSON).write_text('{"task": "t"}')
    with pytest.raises(DatasetError, match=r"bag: /joint_states stamps go back at message #3"):
        bag_frames(tmp_path / "bag", MAPPING)


def test_state_names_and_mapping_file(tmp_path: Path) -> None:
    """observation.state names are the spec's state_names(); reading, a bare joint name is its '.pos'."""
    mapping = load_mapping(REPO / "config/lerobot_mapping.yaml")
    assert mapping == LeRobotMapping(observation={"joint_names": NAMES, "fields": ["joint_positions", "goal"]})
    spec = LeRobotMapping(observation={"joint_names": ["a"], "fields": ["joint_velocities", "goal", "joint_positions"]}).spec([])
    assert spec.state_names() == ("a.vel", "goal.x", "goal.y", "goal.z", "a.pos")
    assert state_joint_names(["a.pos", "b", "a.vel", "goal.x", "c.pos"]) == ["a", "b", "c"]
    assert name_aliases("a.pos") == ("a.pos", "a") and name_aliases("a") == ("a", "a.pos")
    (tmp_path / "m.yaml").write_text("fps: 50\nfsp: 30\n")
    with pytest.raises(Exception, match=r"m.yaml: unknown key\(s\) \['fsp'\]"):
        load_mapping(tmp_path / "m.yaml")


# --------------------------------------------------------------------------- command line and bad input


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["convert", *argv, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.err.strip()


def test_cli_both_ways_with_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_bags(tmp_path / "bags", count=2)
    code, err = run_cli(capsys, str(tmp_path / "bags"), "--to-lerobot", str(tmp_path / "ds"),
                        "--json", str(tmp_path / "a.json"))
    assert code == 0 and err == ""
    assert json.loads((tmp_path / "a.json").read_text())["frames"] == 65
    code, _ = run_cli(capsys, str(tmp_path / "ds"), "--to-rosbag2", str(tmp_path / "out"), "--json", str(tmp_path / "b.json"))
    assert code == 0 and json.loads((tmp_path / "b.json").read_text())["episodes"] == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["episode_000000", "episode_000001"]


def _drop(path: Path) -> None:
    path.unlink()


def _version(path: Path) -> None:
    info = json.loads(path.read_text())
    path.write_text(json.dumps({**info, "codebase_version": "v2.1"}))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_action_column(path: Path) -> None:
    pq.write_table(pq.read_table(path).drop_columns(["action"]), path)


BAD_DATASETS = {
    "missing info": ("meta/info.json", _drop, r"ds/meta/info.json: missing"),
    "missing tasks": ("meta/tasks.parquet", _drop, r"ds/meta/tasks.parquet: missing tasks"),
    "missing episodes": ("meta/episodes/chunk-000/file-000.parquet", _drop, r"ds/meta/episodes: missing"),
    "missing stats": ("meta/stats.json", _drop, r"ds/meta/stats.json: missing"),
    "older version": ("meta/info.json", _version, r"ds/meta/info.json: codebase_version is 'v2.1'"),
    "corrupt data": ("data/chunk-000/file-000.parquet", _truncate, r"ds/data/chunk-000/file-000.parquet: corrupt parquet"),
    "corrupt episodes": ("meta/episodes/chunk-000/file-000.parquet", _truncate,
                         r"ds/meta/episodes/chunk-000/file-000.parquet: corrupt parquet"),
    "feature not in data": ("data/chunk-000/file-000.parquet", _drop_action_column,
                            r"ds/data/chunk-000/file-000.parquet: data for feature\(s\) .* lacks column\(s\) \['action'\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_bad_dataset_is_one_line_exit_2_inputs_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    rel, damage, message = BAD_DATASETS[case]
    write_dataset(tmp_path / "ds")
    damage(tmp_path / "ds" / rel)
    before = tree_digest(tmp_path / "ds")
    code, err = run_cli(capsys, str(tmp_path / "ds"), "--to-rosbag2", str(tmp_path / "out"))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("flow-policy convert: error: ") and __import__("re").search(message, err), err
    assert tree_digest(tmp_path / "ds") == before and not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


@pytest.mark.parametrize(("mapping", "message"), [
    ("fps: 30\n", r"ds/meta/info.json: fps is 50 but the mapping says 30"),
    ("observation: {joint_names: [], fields: [joint_positions, joint_velocities]}\n",
     r"ds/meta/info.json: feature 'observation.state' lacks \['lbr_iiwa_joint_1.vel'"),
    ("action_joint_names: [gripper]\n", r"ds/meta/info.json: feature 'action' lacks \['gripper'\]"),
])
def test_mapping_that_the_dataset_does_not_match(tmp_path: Path, capsys: pytest.CaptureFixture[str], mapping: str,
                                                 message: str) -> None:
    write_dataset(tmp_path / "ds")
    (tmp_path / "m.yaml").write_text(mapping)
    before = tree_digest(tmp_path / "ds")
    code, err = run_cli(capsys, str(tmp_path / "ds"), "--to-rosbag2", str(tmp_path / "out"), "--mapping", str(tmp_path / "m.yaml"))
    assert code == 2 and len(err.splitlines()) == 1 and __import__("re").search(message, err), err
    assert tree_digest(tmp_path / "ds") == before and not (tmp_path / "out").exists()


def test_timestamps_off_the_fps_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    with LeRobotWriter(tmp_path / "ds", 50, {"observation.state": vector_feature(POS_NAMES + ["goal.x", "goal.y", "goal.z"]),
                                              "action": vector_feature(NAMES)}) as writer:
        writer.add_episode({"observation.state": rng.normal(size=(10, 10)), "action": rng.normal(size=(10, 7))},
                           task="t", timestamps_s=np.arange(10) / 30)  # recorded at 30 fps, declared 50
    code, err = run_cli(capsys, str(tmp_path / "ds"), "--to-rosbag2", str(tmp_path / "out"))
    assert code == 2 and "ds/data/chunk-000/file-000.parquet: feature 'timestamp' of episode 0 frame 1" in err, err
    assert "off the 50 fps grid of meta/info.json" in err


def test_bag_missing_a_mapped_joint_or_topic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_bags(tmp_path / "bags", count=1)
    before = tree_digest(tmp_path / "bags")
    (tmp_path / "m.yaml").write_text("observation: {joint_names: [lbr_iiwa_joint_1, elbow], fields: [joint_positions]}\n")
    code, err = run_cli(capsys, str(tmp_path / "bags"), "--to-lerobot", str(tmp_path / "ds"), "--mapping", str(tmp_path / "m.yaml"))
    assert code == 2 and "bags/ep0: unknown joint name(s) ['elbow']" in err, err
    (tmp_path / "m.yaml").write_text("data: {action_source: joint_trajectory}\n")
    code, err = run_cli(capsys, str(tmp_path / "bags"), "--to-lerobot", str(tmp_path / "ds"), "--mapping", str(tmp_path / "m.yaml"))
    assert code == 2 and f"bags/ep0: missing topic {JTC_TOPIC}" in err, err
    assert tree_digest(tmp_path / "bags") == before and not (tmp_path / "ds").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bags", "m.yaml"]
