"""Training from a LeRobotDataset v3.0 directory: the same windows as the bags it was converted from
(exactly), values picked by name through ObservationSpec.state_names(), LeRobot's own files, bad
input as one line with exit 2, and `flow-policy train DATASET` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_lerobot import EPOCH, LEROBOT_FIXTURE, NAMES, POS_NAMES, make_bags, tree_digest

from flow_policy_ros.cli import main
from flow_policy_ros.data.config import DataConfig
from flow_policy_ros.data.lerobot import LeRobotWriter, vector_feature
from flow_policy_ros.data.lerobot_convert import LeRobotMapping, bags_to_lerobot
from flow_policy_ros.errors import DatasetError
from flow_policy_ros.policy import dataset
from flow_policy_ros.policy.config import ObservationSpec, PolicyConfig
from flow_policy_ros.policy.lerobot_windows import is_lerobot_dataset, lerobot_windows

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("joint_positions", "joint_velocities", "goal")


def policy(fields: tuple[str, ...] = FIELDS, horizon: int = 5, **kwargs: object) -> PolicyConfig:
    return PolicyConfig(observation=ObservationSpec(tuple(NAMES), fields), horizon=horizon, control_period_s=0.02,
                        **kwargs)  # type: ignore[arg-type]


def assert_same_windows(a: dataset.Windows, b: dataset.Windows) -> None:
    np.testing.assert_array_equal(a.observations, b.observations)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.episode_index, b.episode_index)


@pytest.mark.parametrize("source", ["commands", "joint_trajectory", "controller_state"])
def test_dataset_converted_from_bags_trains_on_the_bags_windows_exactly(tmp_path: Path, source: str) -> None:
    """Bags → v3 → windows equals bags → windows: observations, whole chunks (with the padding at each
    episode's end) and episode indices, for each action source (test/jtc_bags.py: JTC chunks replaced
    mid-chunk with shuffled joints, the controller's reference at 100 Hz, joint states off the ticks)."""
    import jtc_bags

    if source == "commands":
        bags, _ = make_bags(tmp_path / "bags", count=3)
    else:
        bags = [tmp_path / "bags" / f"ep{i}" for i in range(2)]
        for i, bag in enumerate(bags):
            jtc_bags.write_episode(bag, jtc_bags.make_episode(seed=i), source, seed=i)
    data_cfg = DataConfig(action_source=source)
    cfg = policy()
    from_bags = dataset.windows_from_directory(tmp_path / "bags", cfg, data_cfg, progress=False)
    mapping = LeRobotMapping(task="reach", data=data_cfg, observation={"joint_names": NAMES, "fields": list(FIELDS)})
    bags_to_lerobot(bags, tmp_path / "ds", mapping)
    assert is_lerobot_dataset(tmp_path / "ds") and not is_lerobot_dataset(tmp_path / "bags")
    from_dataset = dataset.load_training_data(tmp_path / "ds", cfg, data_cfg, cache_dir=tmp_path / "cache", progress=False)
    assert len(from_dataset) == len(from_bags) > 0
    assert_same_windows(from_dataset, from_bags)
    assert from_dataset.summary["episodes"] == len(bags) and from_dataset.summary["windows"] == len(from_bags)
    assert from_dataset.summary["observation_range"] == dataset.load_training_data(
        tmp_path / "bags", cfg, data_cfg, cache_dir=tmp_path / "cache", progress=False).summary["observation_range"]


def write_state_dataset(root: Path, state_names: list[str], state: list[np.ndarray], action: list[np.ndarray],
                        fps: int = 50, timestamps: list[np.ndarray] | None = None) -> None:
    with LeRobotWriter(root, fps, {"observation.state": vector_feature(state_names),
                                   "action": vector_feature(NAMES)}) as writer:
        for e, (s, a) in enumerate(zip(state, action)):
            writer.add_episode({"observation.state": s, "action": a}, task="t",
                               timestamps_s=None if timestamps is None else timestamps[e])


def test_values_are_picked_by_name_and_chunks_padded_by_the_last_action(tmp_path: Path) -> None:
    """The dataset holds the values in another order plus one the policy does not read; the policy's
    state_names() pick its observation; chunk k = actions k..k+H-1, then the last one repeated."""
    rng = np.random.default_rng(0)
    names = ["goal.z", "extra.thing", *[f"{n}.vel" for n in NAMES], "goal.x", *POS_NAMES[::-1], "goal.y"]
    lengths = [6, 3]
    state = [rng.normal(size=(n, len(names))).astype(np.float32) for n in lengths]
    action = [rng.normal(size=(n, 7)).astype(np.float32) for n in lengths]
    write_state_dataset(tmp_path / "ds", names, state, action)
    cfg = policy(horizon=4)
    windows = dataset.Windows(*lerobot_windows(tmp_path / "ds", cfg, progress=False))
    order = [names.index(n) for n in cfg.observation.state_names()]
    np.testing.assert_array_equal(windows.observations, np.concatenate([s[:, order] for s in state]))
    np.testing.assert_array_equal(windows.episode_index, [0] * 6 + [1] * 3)
    np.testing.assert_array_equal(windows.actions[0], action[0][0:4])
    np.testing.assert_array_equal(windows.actions[4], action[0][[4, 5, 5, 5]])  # padded within its episode
    np.testing.assert_array_equal(windows.actions[6], action[1][[0, 1, 2, 2]])
    assert windows.summary["sources"] == ["episode_000000", "episode_000001"]


def test_dataset_written_by_lerobot_trains(tmp_path: Path) -> None:
    """LeRobot's own files (bare joint names for the positions) train with the spec's '<joint>.pos' names."""
    before = tree_digest(LEROBOT_FIXTURE)
    cfg = policy(fields=("joint_positions", "goal"), horizon=3)
    windows = dataset.load_training_data(LEROBOT_FIXTURE, cfg, DataConfig(), progress=False)
    assert len(windows) == 25 + 30 and windows.observations.shape == (55, 10) and windows.actions.shape == (55, 3, 7)
    import pyarrow.parquet as pq

    table = pq.read_table(LEROBOT_FIXTURE / "data/chunk-000/file-000.parquet")
    np.testing.assert_array_equal(windows.observations, np.array(table.column("observation.state").to_pylist(), np.float32))
    np.testing.assert_array_equal(windows.actions[:, 0], np.array(table.column("action").to_pylist(), np.float32))
    assert tree_digest(LEROBOT_FIXTURE) == before


def test_train_cli_on_a_dataset_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`flow-policy train DATASET --config ...` a few steps; the checkpoint's data summary names the dataset."""
    from flow_policy_ros.policy.checkpoint import load_checkpoint

    bags, _ = make_bags(tmp_path / "bags", count=3)
    mapping = LeRobotMapping(task="reach", observation={"joint_names": NAMES, "fields": ["joint_positions", "goal"]})
    bags_to_lerobot(bags, tmp_path / "ds", mapping)
    config = yaml.safe_load((REPO / "config" / "train_reach.yaml").read_text())
    config["policy"].update(hidden_dim=16, num_layers=1, horizon=4, basis_size=4)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    code = main(["train", str(tmp_path / "ds"), "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "run"),
                 "--steps", "3", "--val-fraction", "0", "--no-progress", "--json", str(tmp_path / "run.json")])
    assert code == 0, capsys.readouterr().err
    summary = load_checkpoint(tmp_path / "run" / "last.pt").data_summary
    assert summary["format"] == "LeRobotDataset v3.0" and summary["episodes"] == 3 and summary["windows"] == 30 + 35 + 40
    assert json.loads((tmp_path / "run.json").read_text())


def _gap(root: Path) -> None:
    rng = np.random.default_rng(1)
    ts = np.arange(8) / 50
    ts[5:] += 0.02  # frame 5 skips a slot
    write_state_dataset(root, POS_NAMES + ["goal.x", "goal.y", "goal.z"], [rng.normal(size=(8, 10))],
                        [rng.normal(size=(8, 7))], timestamps=[ts])


def _fps(root: Path) -> None:
    rng = np.random.default_rng(1)
    write_state_dataset(root, POS_NAMES + ["goal.x", "goal.y", "goal.z"], [rng.normal(size=(8, 10))],
                        [rng.normal(size=(8, 7))], fps=30)


def _no_goal(root: Path) -> None:
    rng = np.random.default_rng(1)
    write_state_dataset(root, POS_NAMES, [rng.normal(size=(8, 7))], [rng.normal(size=(8, 7))])


def _old_version(root: Path) -> None:
    _no_goal(root)
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))


def _nan(root: Path) -> None:
    state = np.zeros((8, 10))
    state[3, 8] = np.nan
    write_state_dataset(root, POS_NAMES + ["goal.x", "goal.y", "goal.z"], [state], [np.zeros((8, 7))])


BAD = {
    "frame gap": (_gap, r"ds/data/chunk-000/file-000.parquet: feature 'timestamp' of episode 0 skips frame slots at frame 5"),
    "fps": (_fps, r"ds/meta/info.json: fps is 30 but policy.control_period_s 0.02 s needs 50 fps"),
    "missing value": (_no_goal, r"ds/meta/info.json: feature 'observation.state' lacks \['goal.x', 'goal.y', 'goal.z'\]"),
    "older version": (_old_version, r"ds/meta/info.json: codebase_version is 'v2.1'"),
    "nan": (_nan, r"ds: observations has 1 NaN/inf value\(s\), the first at index \(3, 8\)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_dataset_for_training_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    make, message = BAD[case]
    make(tmp_path / "ds")
    with pytest.raises(DatasetError):
        dataset.load_training_data(tmp_path / "ds", policy(fields=("joint_positions", "goal")), DataConfig(), progress=False)
    config = yaml.safe_load((REPO / "config" / "train_reach.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    before = tree_digest(tmp_path / "ds")
    code = main(["train", str(tmp_path / "ds"), "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "run"),
                 "--steps", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("flow-policy train: error: ") and __import__("re").search(message, err), err
    assert tree_digest(tmp_path / "ds") == before


def test_lerobot_written_dataset_trains_exports_and_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 20 item 4 on LeRobot's own files: train on the fixture, export, convert the fixture to bags, and
    replay the exported model on them (the commands of README's "Your LeRobot dataset", a tiny network)."""
    config = yaml.safe_load((REPO / "config" / "train_reach.yaml").read_text())
    config["policy"].update(hidden_dim=16, num_layers=1, horizon=4, basis_size=4)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    before = tree_digest(LEROBOT_FIXTURE)
    steps = [
        ["train", str(LEROBOT_FIXTURE), "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "run"),
         "--steps", "3", "--val-fraction", "0"],
        ["export", str(tmp_path / "run" / "last.pt"), "--out", str(tmp_path / "model.onnx")],
        ["convert", str(LEROBOT_FIXTURE), "--to-rosbag2", str(tmp_path / "bags"), "--mapping", str(REPO / "config/lerobot_mapping.yaml")],
        ["replay", str(tmp_path / "bags"), "--model", str(tmp_path / "model.onnx"), "--out", str(tmp_path / "replay"),
         "--no-plots", "--json", str(tmp_path / "replay.json")],
    ]
    for argv in steps:
        assert main([*argv, *(["--no-progress"] if argv[0] in ("train", "convert") else [])]) == 0, (argv, capsys.readouterr().err)
    report = json.loads((tmp_path / "replay.json").read_text())
    assert report["overall"]["decisions"] == 25 + 30 and len(report["bags"]) == 2  # one decision per frame
    assert tree_digest(LEROBOT_FIXTURE) == before


def test_an_image_policy_needs_the_cameras_video(tmp_path: Path) -> None:
    """A policy observing image.front on a dataset without that video: refused naming the feature, never
    trained on its low-dimensional inputs alone (training with the video: test_lerobot_train_images.py)."""
    from flow_policy_ros.contract import image_feature

    spec = ObservationSpec(tuple(NAMES), ("joint_positions", "goal", "image.front"), (image_feature("front", 64, 64),))
    cfg = PolicyConfig(observation=spec, horizon=3)
    with pytest.raises(DatasetError, match=r"meta/info.json: no video feature 'observation.images.front' for the "
                                           r"policy's 'image.front'; the dataset's videos are \[\]"):
        dataset.load_training_data(LEROBOT_FIXTURE, cfg, DataConfig(), progress=False)


def test_a_new_vector_feature_converts_both_ways_and_trains_like_the_bags(tmp_path: Path) -> None:
    """A spec observing a 2-value Float64MultiArray 'force' on /force and no goal: the mapping's observation
    carries its FeatureSpec; observation.state names 'force.fx', 'force.fy'; the dataset trains on the bags'
    windows exactly; --to-rosbag2 writes /force again (a message when the value changes)."""
    from flow_policy_ros.contract import FeatureSpec
    from flow_policy_ros.data import bag as bagio
    from flow_policy_ros.data.lerobot_convert import lerobot_to_bags
    from flow_policy_ros.data.lerobot_reader import read_dataset

    force = FeatureSpec("force", "vector", "force", "std_msgs/msg/Float64MultiArray", None, 2, ("fx", "fy"))
    rng = np.random.default_rng(4)
    bags = []
    for e in range(2):
        path = tmp_path / "bags" / f"ep{e}"
        ticks = EPOCH + e * 10**12 + 20_000_000 * np.arange(20, dtype=np.int64)
        positions = np.cumsum(rng.normal(scale=0.01, size=(20, 7)), axis=0)
        with bagio.BagWriter(path) as bag:
            for k, t in enumerate(ticks):
                bag.write("/joint_states", bagio.JOINT_STATE, bagio.joint_state_msg(t, NAMES, positions[k], np.zeros(7)), t)
                if k % 5 == 0:
                    bag.write("/force", bagio.FLOAT64_MULTI_ARRAY, bagio.float64_multi_array_msg(rng.normal(size=2)), t)
                bag.write("/commands", bagio.FLOAT64_MULTI_ARRAY, bagio.float64_multi_array_msg(positions[k] + 0.01), t)
        bags.append(path)
    observation = {"joint_names": NAMES, "fields": ["joint_positions", "force"], "features": [force.to_json()]}
    mapping = LeRobotMapping(task="push", observation=observation)
    bags_to_lerobot(bags, tmp_path / "ds", mapping)
    assert read_dataset(tmp_path / "ds").feature_names("observation.state") == POS_NAMES + ["force.fx", "force.fy"]
    cfg = PolicyConfig(observation=ObservationSpec(tuple(NAMES), ("joint_positions", "force"), (force,)), horizon=3,
                       guided_fields=("force",))
    assert_same_windows(dataset.load_training_data(tmp_path / "ds", cfg, DataConfig(), progress=False),
                        dataset.windows_from_directory(tmp_path / "bags", cfg, DataConfig(), progress=False))
    again = lerobot_to_bags(tmp_path / "ds", tmp_path / "again", mapping)
    times, values = bagio.read_episode_bag(again[0], DataConfig(), vector_features=[force]).vector_series("force")
    assert len(times) == 4 and values.shape == (4, 2)
