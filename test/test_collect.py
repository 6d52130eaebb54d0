"""``flow-policy collect``: one rosbag2 per episode, success rate printed and written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flow_policy_ros.cli import CliError, main
from flow_policy_ros.data.bag import read_episode_bag
from flow_policy_ros.errors import BagError
from flow_policy_ros.sim.collect import episode_seeds


def test_collect_writes_one_readable_bag_per_episode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, summary = tmp_path / "data", tmp_path / "collect.json"
    argv = ["collect", "--task", "reach_around", "--episodes", "2", "--out", str(out), "--seed", "3",
            "--storage", "sqlite3", "--json", str(summary), "--no-progress"]
    assert main(argv) == 0
    assert "expert success rate on reach_around: 2/2" in capsys.readouterr().out
    bags = sorted(out.iterdir())
    assert [b.name for b in bags] == ["episode_0000", "episode_0001"]
    recording = read_episode_bag(bags[1])
    assert recording.metadata["seed"] == 3_000_001 and recording.metadata["success"] is True
    assert recording.metadata["route"] in ("left", "right")
    assert recording.commands.shape == (300, 7) and recording.positions.shape == (1441, 7)
    result = json.loads(summary.read_text())
    assert result["success_rate"] == 1.0 and result["episodes"] == 2 and result["storage"] == "sqlite3"
    # a second run into the same directory is refused, naming an existing episode
    assert main(argv) == 2
    assert "episode_0000" in capsys.readouterr().err


def test_episode_seeds_are_disjoint_between_collection_seeds() -> None:
    assert episode_seeds(0, 3) == [0, 1, 2]
    assert set(episode_seeds(1, 100)).isdisjoint(episode_seeds(0, 100))
    with pytest.raises(CliError, match="--episodes"):
        episode_seeds(0, 0)
    with pytest.raises(CliError, match="--seed"):
        episode_seeds(-2, 5)


def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["collect", "--task", "reach", "--episodes", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--episodes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["collect", "--task", "push", "--episodes", "1", "--out", str(tmp_path / "y")])


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_collect_records_the_camera_of_reach_object(tmp_path: Path, storage: str) -> None:
    """A camera task's bag holds rgb8 Image messages equal to the frames rendered in-process, and no /goal."""
    from flow_policy_ros.data.bag import list_topics, read_image_topic
    from flow_policy_ros.data.config import DataConfig
    from flow_policy_ros.sim.camera import CameraSpec
    from flow_policy_ros.sim.collect import OBJECT_POSITION_TOPIC
    from flow_policy_ros.sim.env import SimEnv
    from flow_policy_ros.sim.rollout import run_expert_episode

    out = tmp_path / "data"
    assert main(["collect", "--task", "reach_object", "--episodes", "1", "--out", str(out), "--seed", "2",
                 "--storage", storage, "--no-progress"]) == 0
    bag = out / "episode_0000"
    topics = list_topics(bag)
    assert topics["/camera/front/image_raw"] == ("sensor_msgs/msg/Image", 76)
    assert "/goal" not in topics and topics[OBJECT_POSITION_TOPIC].count == 7
    stamps, frames = read_image_topic(bag, "/camera/front/image_raw")
    with SimEnv(camera=CameraSpec()) as env:
        expected = run_expert_episode("reach_object", 2_000_000, env=env).images["front"]
    assert frames.dtype == np.uint8 and np.array_equal(frames, expected.frames)
    assert np.array_equal(stamps, expected.times_ns)
    recording = read_episode_bag(bag, DataConfig(goal_topic=OBJECT_POSITION_TOPIC))
    assert recording.metadata["success"] is True and recording.metadata["camera"]["rate_hz"] == 12.5
    assert np.allclose(recording.goals[0], recording.metadata["goal_m"])
    with pytest.raises(BagError, match="missing topic /goal"):
        read_episode_bag(bag)


def test_collect_without_camera_writes_no_images(tmp_path: Path) -> None:
    from flow_policy_ros.data.bag import list_topics

    out = tmp_path / "data"
    assert main(["collect", "--task", "reach", "--episodes", "1", "--out", str(out), "--no-progress"]) == 0
    assert sorted(list_topics(out / "episode_0000")) == ["/commands", "/goal", "/joint_states"]
