"""``flow-policy demo``: the command-line verb (arguments, progress, report) over :mod:`flow_policy_ros.ros.launch_harness`."""

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
    STARTUP_BUDGET_S,
    LoopMonitor,
    _print_outcome,
    latency_summary,
    resolve_model,
    ros_environment,
    run_loop,
    start_closed_loop,
)
from flow_policy_ros.runtime.settings import add_setting_flags


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=8,
                        help="episodes to run (default 8: about 16 s warm, 76 s on a first run after install)")
    parser.add_argument("--task", default="reach", choices=("reach", "reach_around"), help="sim task (default reach)")
    parser.add_argument("--model", help="ONNX policy (default: the shipped models/iiwa_reach.onnx)")
    add_setting_flags(parser, ["execution", "inject_delay_ms"])  # policy_node's parameters of the same names
    parser.add_argument("--record", type=Path, metavar="BAG", help="record each episode as a rosbag2 under this directory")
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
    model = resolve_model(args.model)
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
    print(f"demo: {args.episodes} x {args.task}, model {model.name}, {args.execution}; ROS_DOMAIN_ID="
          f"{env['ROS_DOMAIN_ID']}, discovery {env['ROS_AUTOMATIC_DISCOVERY_RANGE']}; logs in {log_dir}", flush=True)
    start = time.monotonic()
    monitor = LoopMonitor()
    nodes = start_closed_loop(env, log_dir, model, args.task, args.episodes, args.execution, args.record,
                              args.thread_priority, seeds,
                              {"inject_delay_ms": args.inject_delay_ms} if args.inject_delay_ms else None)
    try:
        problem = run_loop(nodes, monitor, lambda o: len(o) >= args.episodes,
                           STARTUP_BUDGET_S + EPISODE_BUDGET_S * args.episodes, _print_outcome)
        if problem is None:
            monitor.wait_for_policy_update(2.0)
        outcomes, policy, sim = monitor.snapshot()
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
        "log_dir": str(log_dir),
    }
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
    smooth = result.get("smoothness")
    if smooth and smooth["accel_rad_s2"] is not None:
        print(f"recorded commands   peak |accel| {smooth['accel_rad_s2']:.1f} rad/s^2  peak |jerk| {smooth['jerk_rad_s3']:.0f} rad/s^3"
              f"  (mean over {smooth['episodes']} episodes, all windows)")
