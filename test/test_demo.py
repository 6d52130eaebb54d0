"""``flow-policy demo``: the DDS environment rules (pure) and one short episode end to end (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, node_env

from flow_policy_ros.cli.ros_bench import cpu_seconds
from flow_policy_ros.ros.launch_harness import DOMAIN_BASE, DOMAIN_SPAN, ros_environment


def test_environment_passed_through_and_caller_values_win():
    env = ros_environment({"PATH": "/x", "LD_LIBRARY_PATH": "/opt/ros", "ROS_DOMAIN_ID": "42",
                           "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}, pid=7)
    assert env == {"PATH": "/x", "LD_LIBRARY_PATH": "/opt/ros", "ROS_DOMAIN_ID": "42", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}


def test_environment_picks_a_domain_and_localhost_when_unset():
    env = ros_environment({"PATH": "/x", "ROS_DOMAIN_ID": ""}, pid=12345)
    assert env["ROS_DOMAIN_ID"] == str(DOMAIN_BASE + 12345 % DOMAIN_SPAN)
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert env["PATH"] == "/x"


def test_cpu_seconds_reads_proc_stat():
    assert cpu_seconds(os.getpid()) > 0.0


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factory import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", horizon=8)


@pytest.mark.slow
@pytest.mark.parametrize("execution", ["stream", "trajectory"])
def test_demo_one_episode_end_to_end(model_path, tmp_path, execution):
    """Both nodes start as processes, one episode runs to its outcome (the untrained tiny model does not
    reach the goal, but the loop runs), the JSON has the promised fields, both nodes exit cleanly, and the
    recorded episode bag holds the closed loop."""
    out = tmp_path / "demo.json"
    record = tmp_path / "rec"
    cmd = [sys.executable, "-m", "flow_policy_ros", "demo", "--episodes", "1", "--model", str(model_path),
           "--execution", execution, "--json", str(out), "--record", str(record), "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=node_env(), capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    for key in ("episodes", "success_rate", "tick_jitter_p99_ms", "obs_to_command_p50_ms", "inference_p99_ms"):
        assert key in result, key
    assert result["episodes"] == 1 and result["success_rate"] == 0.0
    assert result["node_exit_status"] == {"sim_node": 0, "policy_node": 0}
    assert result["ros_domain_id"] == int(node_env()["ROS_DOMAIN_ID"])
    assert result["obs_to_command_p50_ms"] is not None and result["inference_p99_ms"] > 0
    assert "success rate" in proc.stdout
    from flow_policy_ros.data.bag import list_topics

    bags = sorted(record.iterdir())
    assert [b.name for b in bags] == ["episode_0000_seed0"]
    topics = list_topics(bags[0])
    assert topics["/joint_states"].count > 500  # 6 s at 120 Hz
    assert topics["/goal"].count == 1
    command_topic = "/commands" if execution == "stream" else "/joint_trajectory_controller/joint_trajectory"  # a JTC setup's
    assert topics[command_topic].count > 10
    assert "/diagnostics" in topics
    episode = json.loads((bags[0] / "episode.json").read_text())
    assert episode["seed"] == 0 and episode["success"] is False
    replay = subprocess.run([sys.executable, "-m", "flow_policy_ros", "replay", str(bags[0]), "--model", str(model_path),
                             "--out", str(tmp_path / "replay")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert replay.returncode == 0, replay.stdout + replay.stderr  # flow-policy replay reads the recording back


@pytest.mark.slow
def test_demo_camera_task_runs_the_shipped_camera_model_on_the_sim_camera(tmp_path):
    """``demo --task reach_object`` without --model: the task's shipped camera model drives the arm from
    sim_node's camera over DDS (no goal topic); the recording holds the frames the policy saw."""
    out = tmp_path / "demo.json"
    record = tmp_path / "rec"
    cmd = [sys.executable, "-m", "flow_policy_ros", "demo", "--task", "reach_object", "--episodes", "1",
           "--json", str(out), "--record", str(record), "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=node_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert Path(result["model"]).name == "iiwa_reach_object.onnx" and result["task"] == "reach_object"
    assert result["episodes"] == 1 and result["node_exit_status"] == {"sim_node": 0, "policy_node": 0}
    assert result["inference_p99_ms"] > 0  # chunks were computed: every one needs a paired camera frame
    from flow_policy_ros.data.bag import list_topics

    topics = list_topics(sorted(record.iterdir())[0])
    assert "/goal" not in topics
    frames, states = topics["/camera/front/image_raw"].count, topics["/joint_states"].count
    assert frames >= 10 and abs(frames / states - 12.5 / 120.0) < 0.25 * 12.5 / 120.0  # 12.5 Hz beside 120 Hz states
    assert topics["/commands"].count > 50


def test_bench_ros_reads_the_stage_breakdown_from_diagnostics(capsys):
    """The per-stage keys policy_node publishes come back in path order, ms as floats, 'nan' as None,
    and the bench table prints every stage."""
    from flow_policy_ros.cli.ros_bench import print_table
    from flow_policy_ros.ros.launch_harness import latency_summary, stage_summary
    from flow_policy_ros.runtime.latency import STAGES, StageLatencies

    latencies = StageLatencies()
    latencies.add("inference", 0.0004)
    latencies.add("obs_to_command", 0.0011)
    diagnostics = {**latencies.diagnostic_values(), "deadline_misses": "0", "scheduling": "SCHED_OTHER"}
    stages = stage_summary(diagnostics)
    assert list(stages) == list(STAGES)
    assert stages["inference"] == {"p50_ms": pytest.approx(0.4), "p99_ms": pytest.approx(0.4)}
    assert stages["handoff"] == {"p50_ms": None, "p99_ms": None}
    result = {**latency_summary(diagnostics), "cpu_percent": {"policy_node": 9.0}, "success_rate": None,
              "episodes": 0, "successes": 0, "load_average": (1.0, 1.0, 1.0), "cpu_count": 2}
    assert result["stages"] == stages
    print_table(result)
    out = capsys.readouterr().out
    for stage in STAGES:
        assert stage in out


def _bench_args(argv: list[str]):
    import argparse

    from flow_policy_ros.cli import bench

    parser = argparse.ArgumentParser()
    bench.configure_parser(parser)
    return bench, parser.parse_args(argv)


@pytest.mark.parametrize(("argv", "message"), [
    (["--sweep"], "needs --checkpoint"),
    (["--sweep", "--checkpoint", "/nonexistent.pt"], "not found"),
    (["--sweep", "--checkpoint", __file__, "--solvers", "dopri5"], "unknown"),
    (["--sweep", "--checkpoint", __file__, "--steps", "0"], ">= 1"),
    (["--sweep", "--checkpoint", __file__, "--calls", "10"], "at least 50"),
])
def test_bench_sweep_refuses_bad_input_before_any_work(argv, message):
    from flow_policy_ros.errors import UsageError

    bench, args = _bench_args(argv)
    with pytest.raises(UsageError, match=message):
        bench.run(args)


def test_bench_sweep_times_every_cell_on_both_engines(tmp_path, capsys):
    """Every (solver, steps, batch) cell has both engines' p50 <= p99 and a throughput, the solver's
    network-evaluation count, and an export that passed parity; the table shows every row."""
    from model_factory import make_checkpoint

    from flow_policy_ros.cli.bench_sweep import print_sweep_table, sweep

    checkpoint = make_checkpoint(tmp_path / "tiny.pt")
    result = sweep(checkpoint, ["euler", "heun"], [1, 2], batches=[1, 4], calls=50, progress=False)
    cells = [(r["solver"], r["steps"], r["batch"]) for r in result["rows"]]
    assert cells == [(s, n, b) for s in ("euler", "heun") for n in (1, 2) for b in (1, 4)]
    for row in result["rows"]:
        assert row["nfe"] == row["steps"] * (2 if row["solver"] == "heun" else 1)
        assert row["parity_max_abs_diff"] <= 1e-4
        for engine in ("onnxruntime", "torch_eager"):
            cell = row[engine]
            assert 0 < cell["p50_ms"] <= cell["p99_ms"] and cell["chunks_per_s"] > 0
    print_sweep_table(result)
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith(("euler", "heun")) for line in lines) == 8


@pytest.mark.slow
def test_demo_reactivates_the_policy_node_after_each_reset(tmp_path):
    """A reset teleports the arm: a driver restart to the policy node, which then holds 'not tracking' until
    it is re-activated. sim_node re-activates it (reactivate_node) at each reset, so the second episode runs
    from where the arm is: the policy node's log shows the re-activation and never the tracking hold."""
    out, logs = tmp_path / "demo.json", tmp_path / "logs"
    cmd = [sys.executable, "-m", "flow_policy_ros", "demo", "--episodes", "2", "--json", str(out), "--log-dir", str(logs)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=node_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (logs / "policy_node.log").read_text()
    assert log.count("deactivated: model kept, not commanding") >= 1 and "not tracking" not in log, log[-2000:]
    assert json.loads(out.read_text())["episodes"] == 2
