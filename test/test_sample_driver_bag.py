"""The committed sample driver bag (config/samples/driver_bag) of the joint-map example in README
and docs/command_line.md: it is what scripts/make_sample_driver_bag.py generates, its joints have
the driver's names and order, and replay with config/example_joint_map.yaml scores it with the
shipped model (without the map, replay names the missing joints). Real bag, real ONNX Runtime."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from flow_policy_ros.cli import main
from flow_policy_ros.data import bag as bagio
from flow_policy_ros.data.replay_source import load_joint_map

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "config" / "samples" / "driver_bag"
JOINT_MAP = REPO_ROOT / "config" / "example_joint_map.yaml"
MODEL = REPO_ROOT / "models" / "iiwa_reach.onnx"


def _script():
    spec = importlib.util.spec_from_file_location("make_sample_driver_bag", REPO_ROOT / "scripts" / "make_sample_driver_bag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _messages(path: Path) -> list[tuple[str, int, object]]:
    return [(raw.topic, raw.log_time_ns, bagio.deserialize(raw.data, raw.msgtype)) for raw in bagio.iter_raw_messages(path)]


def test_sample_is_small_and_has_the_drivers_names_in_shuffled_order():
    size = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert size < 40_000
    messages = _messages(SAMPLE)
    states = [m for topic, _, m in messages if topic == "/joint_states"]
    assert {topic for topic, _, _ in messages} == {"/joint_states", "/goal", "/commands"}
    assert 50 <= len(states) <= 70  # 1 s at 60 Hz
    assert all(sorted(m.name) == sorted(load_joint_map(JOINT_MAP)) for m in states)
    assert len({tuple(m.name) for m in states}) > 10  # the order changes from message to message


def test_sample_is_what_the_script_generates(tmp_path):
    """Regenerated from the simulator with the script's fixed seeds: the same messages (values to 1e-9)."""
    script = _script()
    fresh = script.write_driver_bag(script.expert_recording(), tmp_path / "driver_bag")
    committed, regenerated = _messages(SAMPLE), _messages(fresh)
    assert len(committed) == len(regenerated)
    for (topic_a, t_a, a), (topic_b, t_b, b) in zip(committed, regenerated):
        assert (topic_a, t_a) == (topic_b, t_b)
        if topic_a == "/joint_states":
            assert list(a.name) == list(b.name)
            np.testing.assert_allclose(a.position, b.position, atol=1e-9)
        elif topic_a == "/commands":
            np.testing.assert_allclose(a.data, b.data, atol=1e-9)


def test_replay_with_the_example_joint_map_scores_the_sample(tmp_path, capsys):
    """README's joint-map command on the sample: every decision scored, in distribution, within the
    limits; the same bag without the map is refused in one line that names the unmatched joints."""
    out = tmp_path / "replay_driver"
    assert main(["replay", str(SAMPLE), "--model", str(MODEL), "--out", str(out), "--joint-map", str(JOINT_MAP),
                 "--no-plots"]) == 0
    (report,) = json.loads((out / "report.json").read_text())["bags"]
    assert report["action_source"] == "commands" and report["decisions"] >= 45
    assert report["first_action"]["mae_rad"] < 0.01  # the shipped model follows the expert it learned from
    safety = report["safety"]
    assert (safety["ood_decisions"], safety["outside_limits_commands"], safety["velocity_violation_steps"]) == (0, 0, 0)
    capsys.readouterr()
    assert main(["replay", str(SAMPLE), "--model", str(MODEL), "--out", str(tmp_path / "unmapped"), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lbr_iiwa_joint_1" in err and "lbr_joint_0" in err


@pytest.mark.parametrize("doc", ["README.md", "docs/command_line.md"])
def test_docs_joint_map_example_uses_the_sample(doc):
    text = (REPO_ROOT / doc).read_text()
    assert "flow-policy replay config/samples/driver_bag --model models/iiwa_reach.onnx" in text
    assert "--joint-map config/example_joint_map.yaml" in text
