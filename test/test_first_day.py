"""The first-day chain, rehearsed in simulation on a JointTrajectoryController setup's topics, end to end.

record (``demo --execution trajectory --record``: the shipped policy moves the simulated arm
through ``/joint_trajectory_controller/joint_trajectory``, standing in for teleoperation) →
train (``config/train_reach_jtc.yaml``, which reads that topic) → export → replay → shadow
(``demo --shadow``: the new model previews while the shipped one drives) → live (``demo`` with the
new model on the JTC topic). The commands are README's, with tiny sizes (2 episodes, 30 training
steps); each is a separate ``python -m flow_policy_ros`` process, as a user runs them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, node_env

JTC_TOPIC = "/joint_trajectory_controller/joint_trajectory"


def flow_policy(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "flow_policy_ros", *args], cwd=REPO_ROOT, env=node_env(),
                          capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, f"flow-policy {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_record_train_export_replay_shadow_live(tmp_path: Path):
    started = time.monotonic()
    data, run, model, out = tmp_path / "data", tmp_path / "run", tmp_path / "jtc_reach.onnx", tmp_path / "out"
    # 1. record on the JTC topic
    flow_policy("demo", "--execution", "trajectory", "--episodes", "2", "--record", str(data),
                "--json", str(out / "record.json"), "--log-dir", str(tmp_path / "logs_record"))
    from flow_policy_ros.data.bag import find_episodes, list_topics

    episodes = find_episodes(data)
    assert len(episodes) == 2
    topics = list_topics(episodes[0])
    assert topics[JTC_TOPIC].count > 3 and "/joint_trajectory" not in topics
    # 2. train with the JTC recipe (it reads JTC_TOPIC), 3. export
    flow_policy("train", str(data), "--config", "config/train_reach_jtc.yaml", "--out", str(run), "--steps", "30",
                "--val-fraction", "0", "--no-progress")
    flow_policy("export", str(run / "last.pt"), "--out", str(model))
    # 4. replay on the recordings
    replay = flow_policy("replay", str(data), "--model", str(model), "--config", "config/train_reach_jtc.yaml",
                         "--out", str(out / "replay"), "--json", str(out / "replay.json"))
    assert json.loads((out / "replay.json").read_text())["overall"]["decisions"] > 0, replay.stdout
    assert sorted(p.name for p in (out / "replay").glob("*.png")) == ["summary.png"]  # one summary plot by default
    # 5. shadow: the new model previews while the shipped policy drives the arm
    # (2 episodes: a 1-episode run that succeeds within ~2 s can end before the demo's monitor has
    # discovered the sim, and the outcome is lost; seen on main too)
    flow_policy("demo", "--shadow", "--model", str(model), "--execution", "trajectory", "--episodes", "2",
                "--json", str(out / "shadow.json"), "--log-dir", str(tmp_path / "logs_shadow"))
    shadow = json.loads((out / "shadow.json").read_text())
    assert shadow["trajectory_topic"] == JTC_TOPIC and shadow["episodes"] == 2
    assert shadow["shadow"]["ticks_compared"] > 0 and shadow["shadow"]["previews_sent"] > 0
    assert shadow["shadow"]["diff_max_rad"] is not None
    assert set(shadow["node_exit_status"]) == {"sim_node", "policy_node", "shadow_node"}
    # 6. live: the new model moves the arm through the JTC topic
    flow_policy("demo", "--model", str(model), "--execution", "trajectory", "--episodes", "1",
                "--json", str(out / "live.json"), "--log-dir", str(tmp_path / "logs_live"))
    live = json.loads((out / "live.json").read_text())
    assert live["episodes"] == 1 and live["model_name"] is not None
    print(f"first-day chain: {time.monotonic() - started:.0f} s")


def test_readme_path_has_the_six_steps_in_order_and_the_shadow_and_live_runs_on_the_jtc_topic():
    """README's path is the chain above: its numbered steps in order, shadow and live over ROS 2 in
    trajectory mode (the JTC topic), and the JTC recording rehearsal this test runs."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("## From demonstrations to your own policy"):text.index("## On a robot")]
    steps = [section.index(f"# {i}. {name}") for i, name in
             enumerate(("record", "train", "export", "replay", "shadow", "live"), start=1)]
    assert steps == sorted(steps)
    assert "flow-policy demo --shadow --model runs/my_reach.onnx --execution trajectory" in section
    assert "flow-policy demo --model runs/my_reach.onnx --execution trajectory" in section
    assert "flow-policy demo --execution trajectory --episodes 50 --record data/jtc_rehearsal" in section
    assert "--config config/train_reach_jtc.yaml" in section
