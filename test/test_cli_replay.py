"""flow-policy replay's command line as README uses it: a directory of episode bags (like train), the
shipped example joint map, and output directories created as needed. Real bags, real ONNX Runtime."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from model_factory import make_tiny_model
from test_replay import DRIVER_NAMES, MODEL_NAMES, synthetic_bag

from flow_policy_ros.cli import main
from flow_policy_ros.data.replay_source import load_joint_map

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", seed=3)


def test_directory_of_episodes_replays_each_bag_sorted(tmp_path, model):
    """`replay DIR` with DIR holding episode bags (nested too) scores every bag, in sorted order, and
    gives the same per-bag report as naming the bags one by one; out/ (nested, absent) is created."""
    root = tmp_path / "robot_run"
    bags = [synthetic_bag(root / name, seed=i) for i, name in enumerate(["episode_0001", "episode_0000", "day2/episode_0002"])]
    out = tmp_path / "out" / "replay"
    assert main(["replay", str(root), "--model", str(model), "--out", str(out), "--no-plots",
                 "--json", str(tmp_path / "json" / "replay.json")]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [Path(b["bag"]).resolve() for b in report["bags"]] == sorted(p.resolve() for p in bags)
    assert json.loads((tmp_path / "json" / "replay.json").read_text()) == report
    one_by_one = tmp_path / "one_by_one"
    assert main(["replay", *map(str, sorted(bags)), "--model", str(model), "--out", str(one_by_one), "--no-plots"]) == 0
    separate = json.loads((one_by_one / "report.json").read_text())["bags"]
    for a, b in zip(separate, report["bags"], strict=True):
        assert (a["bag"], a["first_action"], a["per_joint"]) == (b["bag"], b["first_action"], b["per_joint"])


def test_directory_without_bags_is_refused_in_one_line(tmp_path, model, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["replay", str(tmp_path / "empty"), "--model", str(model), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no rosbag2 recording" in err and "empty" in err
    assert not (tmp_path / "o").exists()


def test_example_joint_map_is_valid_and_renames_a_driver(tmp_path, model):
    """config/example_joint_map.yaml (README's --joint-map example) maps lbr_joint_0..6 onto the model's joints."""
    path = REPO_ROOT / "config" / "example_joint_map.yaml"
    assert load_joint_map(path) == dict(zip(DRIVER_NAMES, MODEL_NAMES))
    driver = synthetic_bag(tmp_path / "driver", names=DRIVER_NAMES, seed=2)
    native = synthetic_bag(tmp_path / "native", names=MODEL_NAMES, seed=2)
    reports = []
    for bag, extra in ((driver, ["--joint-map", str(path)]), (native, [])):
        out = tmp_path / f"out_{bag.name}"
        assert main(["replay", str(bag), "--model", str(model), "--out", str(out), "--no-plots", *extra]) == 0
        reports.append(json.loads((out / "report.json").read_text())["bags"][0])
    assert reports[0]["first_action"] == reports[1]["first_action"]


def test_replay_does_not_import_torch():
    import subprocess

    code = "import sys, flow_policy_ros.cli.replay; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0


def test_plots_summary_by_default_all_or_none_and_wall_clock_throughput(tmp_path, model, capsys):
    """Default: one summary.png over all bags (no per-bag PNGs), its path printed; --plots all adds two per
    bag; --plots none draws nothing. The decisions/s printed and reported is on the wall clock (not the
    model calls alone, which are faster)."""
    root = tmp_path / "run"
    for i in range(3):
        synthetic_bag(root / f"episode_{i:04d}", seed=i)
    expected = {"summary": {"summary.png"}, "all": {"summary.png"} | {f"episode_{i:04d}.{kind}.png" for i in range(3)
                                                                   for kind in ("joints", "horizon")},
                "none": set()}
    for choice, pngs in expected.items():
        out = tmp_path / choice
        assert main(["replay", str(root), "--model", str(model), "--out", str(out), "--plots", choice]) == 0
        captured = capsys.readouterr()
        assert {p.name for p in out.glob("*.png")} == pngs
        report = json.loads((out / "report.json").read_text())
        overall = report["overall"]
        assert overall["decisions_per_s"] == pytest.approx(overall["decisions"] / overall["wall_time_s"])
        assert overall["decisions_per_s"] < overall["inference_decisions_per_s"]
        assert f"{overall['decisions_per_s']:.0f} decisions/s on the wall clock" in captured.out
        for bag in report["bags"]:
            assert bag["decisions_per_s"]["end_to_end"] == pytest.approx(bag["decisions"] / bag["timing_s"]["wall"])
        if choice != "none":
            assert f"plots: {out / 'summary.png'}" in captured.out and report["summary_plot"] == str(out / "summary.png")
            assert (out / "summary.png").stat().st_size > 10_000


def test_fallback_from_recorded_commands_is_said_in_one_line_and_reported(tmp_path, model, capsys):
    """A bag without /commands is scored against /joint_states: the per-bag report names the topic
    wanted and the one used, the console says it in one line naming the bag; a bag with commands
    has no fallback (field None, no line)."""
    with_cmd = synthetic_bag(tmp_path / "run" / "with_commands", seed=1)
    without = synthetic_bag(tmp_path / "run" / "no_commands", seed=2, commands=False)
    out = tmp_path / "out"
    assert main(["replay", str(with_cmd), str(without), "--model", str(model), "--out", str(out), "--no-plots",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    by_name = {Path(b["bag"]).name: b for b in report["bags"]}
    assert by_name["with_commands"]["action_source"] == "commands" and by_name["with_commands"]["action_fallback"] is None
    fallback = by_name["no_commands"]["action_fallback"]
    assert by_name["no_commands"]["action_source"] == "joint_states"
    assert fallback == {"wanted_source": "commands", "wanted_topic": "/commands", "used_source": "joint_states",
                        "used_topic": "/joint_states", "reason": "the bag has no /commands messages"}
    assert report["overall"]["action_fallback_bags"] == 1
    lines = [line for line in err.splitlines() if "fell back" in line]
    assert lines == ["replay: warning: action source fell back in 1 of 2 bag(s): no /commands in no_commands: scored "
                     "against the executed joint positions on /joint_states instead of the recorded commands"]

    assert main(["replay", str(with_cmd), "--model", str(model), "--out", str(tmp_path / "ok"), "--no-plots"]) == 0
    assert "fell back" not in capsys.readouterr().err
    assert json.loads((tmp_path / "ok" / "report.json").read_text())["overall"]["action_fallback_bags"] == 0


def test_fallback_to_the_recorded_trajectory_names_that_topic(tmp_path, model):
    """A policy's own recording with chunks on /joint_trajectory but no /commands falls back to the chunks."""
    from test_replay import policy_recorded_bag

    from flow_policy_ros.cli.replay import fallback_line
    from flow_policy_ros.data.replay import replay_bag
    from flow_policy_ros.runtime.onnx_policy import OnnxPolicy

    bag = policy_recorded_bag(tmp_path / "traj_only", model, noise_seed=2, ticks=20, commands=False)
    report = replay_bag(bag, OnnxPolicy(model, warmup=0)).report
    assert report["action_source"] == "trajectory"
    assert report["action_fallback"]["used_topic"] == "/joint_trajectory"
    assert fallback_line([report]) == ("action source fell back in 1 of 1 bag(s): no /commands in traj_only: scored "
                                       "against the recorded trajectory chunks on /joint_trajectory instead of the "
                                       "recorded commands")
