"""``flow-policy demo``: the command-line verb (arguments, progress, report) over :mod:`flow_policy_ros.ros.launch_harness`.

The topics are a real ros2_control setup's: ``--execution trajectory`` sends the chunks to
``/joint_trajectory_controller/joint_trajectory`` (and ``--record`` records them there, as
``config/train_reach_jtc.yaml`` reads them); stream mode uses ``/commands``. ``--shadow`` rehearses
shadow mode: ``--model`` runs in shadow mode (previews only, the difference on /diagnostics) while
``--driver-model`` (default the shipped ``iiwa_reach_rtc``) drives the simulated arm, as teleoperation
or the robot's existing controller would on a real arm.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flow_policy_ros.cli import CliError, write_json
from flow_policy_ros.ros.launch_harness import (
    EPISODE_BUDGET_S,
    SHADOW_NODE_NAME,
    STARTUP_BUDGET_S,
    LoopMonitor,
    _print_outcome,
    controller_remaps,
    latency_summary,
    resolve_model,
    ros_environment,
    run_loop,
    start_closed_loop,
)
from flow_policy_ros.runtime.settings import add_setting_flags
from flow_policy_ros.sim.tasks import TASKS


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=8,
                        help="episodes to run (default 8: about 16 s warm, 76 s on a first run after install)")
    parser.add_argument("--task", default="reach", choices=TASKS,
                        help="sim task (default reach; reach_object: sim_node publishes the camera, no goal)")
    parser.add_argument("--model", help="ONNX policy (default: the task's shipped model: models/iiwa_reach_rtc.onnx, "
                        "models/iiwa_reach_around.onnx for reach_around, models/iiwa_reach_object.onnx for reach_object)")
    add_setting_flags(parser, ["execution", "inject_delay_ms"])  # policy_node's parameters of the same names
    parser.add_argument("--record", type=Path, metavar="BAG", help="record each episode as a rosbag2 under this directory "
                        "(trajectory mode: on /joint_trajectory_controller/joint_trajectory, as a JTC setup records)")
    parser.add_argument("--shadow", action="store_true",
                        help="run --model in shadow mode (publishes only previews; the arm vs the previews on "
                             "/diagnostics) while --driver-model drives the simulated arm")
    parser.add_argument("--driver-model", metavar="ONNX",
                        help="with --shadow: the policy that moves the arm (default: the shipped models/iiwa_reach_rtc.onnx)")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--log-dir", type=Path, help="node logs (default: a new temp directory)")
    parser.add_argument("--eval-seed", type=int, metavar="S",
                        help="run the episodes of `flow-policy eval-sim --seed S` (same starts and goals), "
                             "to compare the ROS loop with the in-process one; default: episode seeds 0, 1, 2, ...")
    add_thread_priority_argument(parser)


def add_thread_priority_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--thread-priority", type=int, default=0, metavar="N",
                        help="SCHED_FIFO priority 1-99 for the nodes' control threads (0 = normal scheduling, default); "
                             "falls back with a warning when not permitted")


def recorded_smoothness(root: Path, period_s: float) -> dict[str, Any]:
    """Mean per-episode peak |acceleration| and |jerk| of the /commands recorded under ``root`` (stream mode),
    measured as eval-sim's ``peaks_all_windows`` (all finite-difference windows, one command per tick)."""
    from flow_policy_ros.data import bag as bagio
    from flow_policy_ros.data.bag import find_episodes
    from flow_policy_ros.metrics import mean_overall_peaks

    sequences = []
    for episode in find_episodes(root):
        messages = bagio.read_topics(episode, {"/commands": bagio.FLOAT64_MULTI_ARRAY}, optional=["/commands"])["/commands"]
        if messages:
            sequences.append(np.array([m.data for _, m in sorted(messages, key=lambda x: x[0])], dtype=np.float64))
    return {**mean_overall_peaks(sequences, period_s), "source": "recorded /commands (stream mode)"}


def run(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise CliError(f"--episodes {args.episodes}: must be >= 1")
    if args.record is not None and args.record.exists() and any(args.record.iterdir()):
        raise CliError(f"--record {args.record}: exists and is not empty")
    if args.driver_model and not args.shadow:
        raise CliError("--driver-model: only with --shadow")
    model = resolve_model(args.model, args.task)
    shadow_model = None
    if args.shadow:
        shadow_model, model = model, resolve_model(args.driver_model)
    seeds = None
    if args.eval_seed is not None:
        from flow_policy_ros.sim.closed_loop import eval_episode_seeds

        try:
            seeds = eval_episode_seeds(args.eval_seed, args.episodes)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    env = ros_environment()
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})  # this process's rclpy
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="flow-policy-demo-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    topic = controller_remaps(args.execution).get("joint_trajectory", "/commands")
    print(f"demo: {args.episodes} x {args.task}, model {model.name}, {args.execution} on {topic}; ROS_DOMAIN_ID="
          f"{env['ROS_DOMAIN_ID']}, discovery {env['ROS_AUTOMATIC_DISCOVERY_RANGE']}; logs in {log_dir}", flush=True)
    if shadow_model is not None:
        print(f"shadow: {shadow_model.name} in shadow mode as /{SHADOW_NODE_NAME} (previews on "
              f"/{SHADOW_NODE_NAME}/preview/...), {model.name} drives the arm", flush=True)
    start = time.monotonic()
    monitor = LoopMonitor()
    nodes = start_closed_loop(env, log_dir, model, args.task, args.episodes, args.execution, args.record,
                              args.thread_priority, seeds,
                              {"inject_delay_ms": args.inject_delay_ms} if args.inject_delay_ms else None,
                              shadow_model=shadow_model)
    try:
        problem = run_loop(nodes, monitor, lambda o: len(o) >= args.episodes,
                           STARTUP_BUDGET_S + EPISODE_BUDGET_S * args.episodes, _print_outcome)
        if problem is None:
            monitor.wait_for_policy_update(2.5, shadow=shadow_model is not None)
        outcomes, policy, sim = monitor.snapshot()
        with monitor.lock:
            shadow = dict(monitor.shadow)
    finally:
        nodes.stop_all()
        monitor.close()
    successes = sum(bool(o["success"]) for o in outcomes)
    result: dict[str, Any] = {
        "episodes": len(outcomes),
        "successes": successes,
        "success_rate": successes / len(outcomes) if outcomes else None,
        **latency_summary(policy),
        "task": args.task, "execution": args.execution, "model": str(model), "inject_delay_ms": args.inject_delay_ms,
        "ros_domain_id": int(env["ROS_DOMAIN_ID"]), "wall_time_s": round(time.monotonic() - start, 1),
        "sim_realtime_resyncs": int(sim.get("realtime_resyncs", "0")), "outcomes": outcomes,
        "node_exit_status": {name: proc.returncode for name, proc in nodes.procs.items()},
        "log_dir": str(log_dir), "trajectory_topic" if args.execution == "trajectory" else "commands_topic": topic,
    }
    if shadow_model is not None:
        result["shadow"] = shadow_summary(shadow, shadow_model)
    if args.record is not None and outcomes:
        result["smoothness"] = recorded_smoothness(args.record, 1.0 / 50.0)
    print_summary(result)
    write_json(args.json, result)
    if problem is not None:
        print(f"demo: {problem}", file=sys.stderr)
        for name in nodes.procs:
            print(f"--- {name} log (last lines) ---\n{nodes.log_tail(name)}", file=sys.stderr)
        return 1
    return 0


def shadow_summary(diag: Mapping[str, str], model: Path) -> dict[str, Any]:
    """The shadow node's figures from its last diagnostics message (rad)."""
    def rad(key: str) -> float | None:
        value = diag.get(key)
        return None if value in (None, "", "nan") else float(value)

    return {
        "model": str(model), "node": SHADOW_NODE_NAME, "state": diag.get("state"),
        "ticks_compared": int(diag.get("shadow_ticks_compared", "0")),
        "diff_p50_rad": rad("shadow_diff_p50_rad"), "diff_p95_rad": rad("shadow_diff_p95_rad"),
        "diff_max_rad": rad("shadow_diff_max_rad"), "worst_joint": diag.get("shadow_worst_joint", ""),
        "previews_sent": int(diag.get("commands_sent", "0")) + int(diag.get("trajectories_sent", "0")),
        "limiter_clipped": int(diag.get("limiter_clipped", "0")), "ood_holds": int(diag.get("ood_holds", "0")),
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def print_summary(result: Mapping[str, Any]) -> None:
    rate = result["success_rate"]
    print(f"episodes            {result['episodes']}  success rate {'n/a' if rate is None else f'{rate:.0%}'}")
    print(f"inference           p50 {_fmt(result['inference_p50_ms'])} ms  p99 {_fmt(result['inference_p99_ms'])} ms  "
          f"({result['provider']}{', ' + result['provider_fallback_reason'] if result['provider_fallback_reason'] else ''})")
    print(f"tick jitter         p50 {_fmt(result['tick_jitter_p50_ms'])} ms  p99 {_fmt(result['tick_jitter_p99_ms'])} ms  "
          f"deadline misses {result['deadline_misses']}")
    print(f"obs -> command      p50 {_fmt(result['obs_to_command_p50_ms'])} ms  p99 {_fmt(result['obs_to_command_p99_ms'])} ms")
    shadow = result.get("shadow")
    if shadow:
        print(f"shadow              {Path(shadow['model']).name}: {shadow['previews_sent']} previews, none to the controller; "
              f"arm vs preview p50 {_fmt(shadow['diff_p50_rad'])} p95 {_fmt(shadow['diff_p95_rad'])} "
              f"max {_fmt(shadow['diff_max_rad'])} rad ({shadow['worst_joint'] or 'n/a'}) over {shadow['ticks_compared']} ticks")
    smooth = result.get("smoothness")
    if smooth and smooth["accel_rad_s2"] is not None:
        print(f"recorded commands   peak |accel| {smooth['accel_rad_s2']:.1f} rad/s^2  peak |jerk| {smooth['jerk_rad_s3']:.0f} rad/s^3"
              f"  (mean over {smooth['episodes']} episodes, all windows)")
