"""Training a camera policy from a LeRobotDataset v3.0: the windows of a dataset converted from camera bags
are the bags' windows (joint data exactly, images within the codec's tolerance, frames stored once and
indexed per window), recorded sim episodes train, export and run with their ``image_<camera>`` input, and
bad camera input is one line naming the file and the feature, exit 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from test_lerobot import NAMES, tree_digest
from test_lerobot_video import KEY, MAPPING, MEAN_TOLERANCE, camera_bag, camera_image

from flow_policy_ros.cli import main
from flow_policy_ros.contract import image_feature
from flow_policy_ros.data.config import DataConfig
from flow_policy_ros.data.lerobot_convert import bags_to_lerobot
from flow_policy_ros.data.lerobot_reader import read_dataset
from flow_policy_ros.errors import DatasetError
from flow_policy_ros.policy import dataset
from flow_policy_ros.policy.config import ExperimentConfig, ObservationSpec, PolicyConfig

REPO = Path(__file__).resolve().parents[1]
SIZE = 64  # test_lerobot_video's camera frames are 64 x 64
#: Sim frames (96 x 96, AV1 CRF 30 yuv420p): mean |error| per window in grey levels, measured 1.9 on average
#: and at most 3.2 over 3 recorded episodes (docs/lerobot.md: codec table).
SIM_WINDOW_TOLERANCE = 4.0
SIM_MEAN_TOLERANCE = 2.5


def camera_policy(size: int = SIZE, camera: str = "front", **kwargs: object) -> PolicyConfig:
    spec = ObservationSpec(tuple(NAMES), ("joint_positions", "goal", f"image.{camera}"), (image_feature(camera, size, size),))
    return PolicyConfig(observation=spec, horizon=4, control_period_s=0.02, guided_fields=(f"image.{camera}",),
                        **kwargs)  # type: ignore[arg-type]


def window_errors(a: dataset.Windows, b: dataset.Windows, camera: str) -> np.ndarray:
    """Mean |a's frame - b's frame| (grey levels) of every window, (N,)."""
    index = np.arange(len(a))
    return np.abs(a.window_frames(camera, index).astype(int) - b.window_frames(camera, index).astype(int)).mean(axis=(1, 2, 3))


def assert_same_joint_data(a: dataset.Windows, b: dataset.Windows) -> None:
    assert len(a) == len(b) > 0
    np.testing.assert_array_equal(a.observations, b.observations)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.episode_index, b.episode_index)


def test_windows_of_a_converted_camera_dataset_are_the_bags_windows(tmp_path: Path) -> None:
    """Bags with a 12.5 Hz camera → v3 (AV1) → windows equals bags → windows: observations, chunks and episodes
    exactly; each window's frame within the codec's tolerance of the bag's frame in force at its tick, and
    nearer to it than to the camera images before and after (frame-accurate, not off by one camera frame)."""
    bags, held = [], []
    for seed in range(2):
        bags.append(tmp_path / "bags" / f"ep{seed}")
        held.append(camera_bag(bags[-1], seed)[1])
    bags_to_lerobot(bags, tmp_path / "ds", MAPPING)
    cfg = camera_policy()
    from_bags = dataset.windows_from_directory(tmp_path / "bags", cfg, DataConfig(), progress=False)
    from_dataset = dataset.load_training_data(tmp_path / "ds", cfg, DataConfig(), progress=False)
    assert_same_joint_data(from_dataset, from_bags)
    errors = window_errors(from_dataset, from_bags, "front")
    assert errors.max() <= MEAN_TOLERANCE, errors
    frames = from_dataset.window_frames("front", np.arange(len(from_dataset))).astype(int)
    k = 0
    for seed, camera_index in enumerate(held):  # the bags' windows start at the first camera frame
        for j in camera_index[camera_index >= 0]:
            own = np.abs(frames[k] - camera_image(j + 7 * seed)).mean()
            assert all(own < np.abs(frames[k] - camera_image(o + 7 * seed)).mean() for o in (j - 1, j + 1)), (k, j)
            k += 1
    assert k == len(from_dataset)
    # stored once: each camera image is held over 4 dataset frames, which decode (AV1, a key frame every 2) to
    # at most 2 distinct frames; every stored frame is some window's
    stored = from_dataset.frames["front"]
    images = sum(len(set(h[h >= 0])) for h in held)
    assert len(stored) <= 2 * images < len(from_dataset) and set(from_dataset.frame_index["front"]) == set(range(len(stored)))
    videos = from_dataset.summary["videos"][KEY]
    assert videos == {"decoded_frames": len(from_dataset), "distinct_frames": len(stored)}


def test_lerobots_own_video_trains_an_image_policy(tmp_path: Path) -> None:
    """The AV1 video LeRobot 0.6.1 wrote (no bags behind it): window k of each episode shows its decoded frame k."""
    fixture = REPO / "test/fixtures/lerobot_v30_video_by_lerobot_0.6.1"
    before = tree_digest(fixture)
    windows = dataset.load_training_data(fixture, camera_policy(), DataConfig(), progress=False)
    ds = read_dataset(fixture)
    decoded = np.concatenate([ds.episode_frames(e, KEY) for e in range(len(ds.episodes))])
    assert len(windows) == len(decoded) == 55
    np.testing.assert_array_equal(windows.window_frames("front", np.arange(55)), decoded)
    assert tree_digest(fixture) == before


# --------------------------------------------------------------------------- recorded sim episodes


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> None:
    code = main([*argv, *(["--no-progress"] if argv[0] == "train" else [])])
    assert code == 0, (argv, capsys.readouterr().err)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two reach_object episodes (96 x 96 camera at 12.5 Hz, 6 s each) recorded in PyBullet and converted with
    the shipped mapping; returns (bags, dataset, mapping)."""
    root = tmp_path_factory.mktemp("recorded")
    mapping = REPO / "config/lerobot_mapping_reach_object.yaml"
    assert main(["collect", "--task", "reach_object", "--episodes", "2", "--out", str(root / "bags"), "--seed", "5",
                 "--no-progress"]) == 0
    assert main(["convert", str(root / "bags"), "--to-lerobot", str(root / "ds"), "--mapping", str(mapping),
                 "--no-progress"]) == 0
    return root / "bags", root / "ds", mapping


def camera_config() -> dict:
    """config/train_reach_object.yaml with a tiny network (96 x 96 frames, the sim camera's)."""
    config = yaml.safe_load((REPO / "config/train_reach_object.yaml").read_text())
    config["policy"].update(hidden_dim=16, num_layers=1, horizon=4, basis_size=4, image_channels=[4, 4, 8],
                            image_keypoints=4, image_embed_dim=8)
    config["train"].update(batch_size=16, checkpoint_every=1000, val_every=1000, log_every=1)
    for key in ("image_aux_feature", "image_aux_weight"):  # the aux target is read from bags only
        config["train"].pop(key, None)
    return config


@pytest.mark.slow
def test_recorded_episodes_converted_give_the_bags_windows(recorded: tuple[Path, Path, Path]) -> None:
    """The real correctness check on sim frames: bags → v3 → windows equals bags → windows (joint data exactly,
    each window's image within the codec's tolerance of the bag frame in force)."""
    bags, ds, _ = recorded
    experiment = ExperimentConfig.from_dict(camera_config())
    cfg = experiment.policy
    from_bags = dataset.windows_from_directory(bags, cfg, experiment.data, progress=False)
    from_dataset = dataset.load_training_data(ds, cfg, experiment.data, progress=False)
    assert_same_joint_data(from_dataset, from_bags)
    errors = window_errors(from_dataset, from_bags, "front")
    assert errors.max() <= SIM_WINDOW_TOLERANCE and errors.mean() <= SIM_MEAN_TOLERANCE, (errors.max(), errors.mean())
    assert len(from_dataset.frames["front"]) <= len(from_bags.frames["front"])  # no more frames held than the bags'


@pytest.mark.slow
def test_train_export_and_run_from_a_recorded_camera_dataset(tmp_path: Path, recorded: tuple[Path, Path, Path],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`flow-policy train DATASET` with a camera config a few steps, `export`: the graph takes `image_front`
    uint8 [B, 96, 96, 3], matches PyTorch (the export's parity check, with frames) and OnnxPolicy runs it on a
    decoded frame of the dataset."""
    import onnx

    from flow_policy_ros.policy.checkpoint import load_checkpoint
    from flow_policy_ros.runtime.onnx_policy import OnnxPolicy

    _, ds, _ = recorded
    before = tree_digest(ds)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(camera_config()))
    run(capsys, "train", str(ds), "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "run"),
        "--steps", "3", "--val-fraction", "0", "--threads", "1")
    summary = load_checkpoint(tmp_path / "run" / "last.pt").data_summary
    assert summary["format"] == "LeRobotDataset v3.0" and summary["episodes"] == 2 and summary["windows"] == 600
    assert summary["videos"][KEY]["decoded_frames"] == 600
    run(capsys, "export", str(tmp_path / "run" / "last.pt"), "--out", str(tmp_path / "model.onnx"),
        "--json", str(tmp_path / "export.json"))
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    image = {i.name: i for i in graph.input}["image_front"]
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in image.type.tensor_type.shape.dim][1:] == [96, 96, 3]
    policy = OnnxPolicy(tmp_path / "model.onnx", providers=["CPUExecutionProvider"], warmup=1)
    data = read_dataset(ds)
    frame = data.episode_frames(0, KEY)[0]
    state = np.array(pq.read_table(ds / "data/chunk-000/file-000.parquet").column("observation.state").to_pylist()[0])
    observation = state[data.columns_of("observation.state", [f"{n}.pos" for n in NAMES])]  # the model's: no goal
    noise = np.random.default_rng(0).standard_normal((4, 7)).astype(np.float32)
    actions = policy.predict(observation.astype(np.float32), noise=noise, images={"image.front": frame})
    assert actions.shape == (4, 7) and np.all(np.isfinite(actions))
    # the export's parity check ran the graph and PyTorch on frames (3 steps from a zero-initialised output layer
    # leave the actions nearly independent of the frame, so that is where the image path is compared)
    assert json.loads((tmp_path / "export.json").read_text())["max_abs_diff"] <= 1e-4
    assert tree_digest(ds) == before


# --------------------------------------------------------------------------- bad camera input


def _delete_video(ds: Path) -> None:
    next((ds / "videos").rglob("*.mp4")).unlink()


def _shorter_episode_span(ds: Path) -> None:
    path = next((ds / "meta/episodes").rglob("*.parquet"))
    table = pq.read_table(path)
    column = f"videos/{KEY}/to_timestamp"
    values = table.column(column).to_pylist()
    values[1] -= 0.04  # two frames short of its 39
    pq.write_table(table.set_column(table.column_names.index(column), column, [values]), path)


BAD = {
    "missing video": (_delete_video, {}, r"ds/videos/observation.images.front/chunk-000/file-000.mp4: missing video "
                                         r"\(feature 'observation.images.front'\)"),
    "camera absent": (None, {"camera": "wrist"}, r"ds/meta/info.json: no video feature 'observation.images.wrist' for "
                                                 r"the policy's 'image.wrist'; the dataset's videos are \['observation.images.front'\]"),
    "frame count": (_shorter_episode_span, {}, r"file-000.mp4: feature 'observation.images.front': episode 1 spans 0.7400 s "
                                               r"of video \(37 frames at 50 fps.*\) but has 39 frames"),
    "image shape": (None, {"size": 96}, r"ds/meta/info.json: feature 'observation.images.front' has shape \[64, 64, 3\]; "
                                        r"the policy's 'image.front' takes image_shape \[96, 96, 3\]"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_camera_dataset_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    damage, policy_kwargs, message = BAD[case]
    bags = [tmp_path / "bags" / f"ep{seed}" for seed in range(2)]
    for seed, bag in enumerate(bags):
        camera_bag(bag, seed)
    bags_to_lerobot(bags, tmp_path / "ds", MAPPING)
    if damage is not None:
        damage(tmp_path / "ds")
    cfg = camera_policy(**policy_kwargs)
    with pytest.raises(DatasetError, match=message):
        dataset.load_training_data(tmp_path / "ds", cfg, DataConfig(), progress=False)
    config = camera_config()
    config["policy"].update(observation=cfg.observation.to_json(), guided_fields=list(cfg.guided_fields))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    before = tree_digest(tmp_path / "ds")
    code = main(["train", str(tmp_path / "ds"), "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "run"),
                 "--steps", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("flow-policy train: error: ") and re.search(message, err), err
    assert tree_digest(tmp_path / "ds") == before and not any((tmp_path / "run").glob("*"))  # no checkpoint


def test_frames_that_cannot_fit_in_memory_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reserving the frames fails (MemoryError: a dataset far larger than RAM): a DatasetError naming the
    feature and the size, before anything is decoded."""
    from flow_policy_ros.policy import lerobot_windows

    def no_memory(capacity: int, shape: tuple[int, int, int]) -> None:
        raise MemoryError(f"Unable to allocate {capacity} frames")

    monkeypatch.setattr(lerobot_windows, "FrameStore", no_memory)
    fixture = REPO / "test/fixtures/lerobot_v30_video_by_lerobot_0.6.1"
    with pytest.raises(DatasetError, match=r"meta/info.json: feature 'observation.images.front': 55 frames of \[64, 64, 3\] "
                                           r"\(0.0 GB as uint8\) cannot be reserved in memory"):
        lerobot_windows.lerobot_windows(fixture, camera_policy(), progress=False)
