"""``flow-policy bench --ros``: the closed loop sim_node + policy_node at 50 Hz, measured.

Runs the same two processes as ``flow-policy demo`` (same environment rules: a per-run
``ROS_DOMAIN_ID`` and ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` unless the caller set them,
see ``demo.py``) with endless ``reach`` episodes for ``--duration`` seconds after warm-up, then
reports:

- tick period jitter p50/p99 (ms): |actual − nominal| interval between policy ticks, and
  obs→command latency p50/p99 (ms): joint state ``header.stamp`` → publish of the first command
  of the chunk computed from it, both as measured by policy_node itself (its diagnostics at
  the end of the run: the last 3000 ticks / 1000 chunks, i.e. 60 s at 50 Hz with
  ``replan_every`` 8 for the chunk latency window of ~160 s);
- inference p50/p99 (ms) and deadline misses, from the same diagnostics;
- CPU use of each node process over the measured window (% of one core), from
  ``/proc/<pid>/stat`` utime + stime (psutil is not needed);
- success over the episodes finished within the window.

Targets (issue "ROS 2 nodes"): jitter p99 ≤ 2 ms, obs→command p50 ≤ 3 ms. On a machine whose
cores are busy with other work, normal scheduling misses the jitter target (the tick waits for
a core); ``args.thread_priority`` > 0 (``--thread-priority`` where the bench parser offers it)
gives both nodes' control threads SCHED_FIFO (see ``realtime.py``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from flow_policy_ros.cli import CliError, write_json
from flow_policy_ros.ros.launch_harness import LoopMonitor, latency_summary, resolve_model, ros_environment, run_loop, start_closed_loop

#: Seconds of closed loop before the measured window starts (start-up, first episode).
WARMUP_S = 3.0
TARGETS = {"tick_jitter_p99_ms": 2.0, "obs_to_command_p50_ms": 3.0}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time (s) of process ``pid`` so far, from ``/proc/<pid>/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; fields[0] is the state (field 3)
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def run(args: argparse.Namespace) -> int:
    duration = float(args.duration)
    if duration < 5.0:
        raise CliError(f"--duration {duration}: use at least 5 s")
    task = getattr(args, "task", None) or "reach"
    model = resolve_model(args.model, task)
    env = ros_environment()
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    log_dir = Path(tempfile.mkdtemp(prefix="flow-policy-bench-ros-"))
    print(f"bench --ros: {duration:g} s closed loop of {task}, model {model.name}; ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}; "
          f"logs in {log_dir}", flush=True)
    monitor = LoopMonitor()
    overrides: dict[str, object] = {}
    if getattr(args, "inference", None):
        overrides["inference_thread"] = args.inference == "thread"
    if getattr(args, "executor", None):
        overrides["executor"] = args.executor
    nodes = start_closed_loop(env, log_dir, model, task, 0, "stream", None, getattr(args, "thread_priority", 0),
                              policy_overrides=overrides)
    try:
        problem = run_loop(nodes, monitor, lambda _: monitor.snapshot()[1].get("state") == "running", 60.0)
        if problem is None:
            time.sleep(WARMUP_S)
            cpu0 = {name: cpu_seconds(proc.pid) for name, proc in nodes.procs.items()}
            t0 = time.monotonic()
            episodes_before = len(monitor.snapshot()[0])
            problem = run_loop(nodes, monitor, lambda _: time.monotonic() - t0 >= duration, duration + 30.0)
        if problem is None:
            cpu1 = {name: cpu_seconds(proc.pid) for name, proc in nodes.procs.items()}
            elapsed = time.monotonic() - t0
            monitor.wait_for_policy_update(2.0)
        outcomes, policy, sim = monitor.snapshot()
    finally:
        nodes.stop_all()
        monitor.close()
    if problem is not None:
        for name in nodes.procs:
            print(f"--- {name} log (last lines) ---\n{nodes.log_tail(name)}")
        raise CliError(f"closed loop failed: {problem} (logs in {log_dir})")
    window = outcomes[episodes_before:]
    successes = sum(bool(o["success"]) for o in window)
    result: dict[str, Any] = {
        "duration_s": round(elapsed, 2),
        **latency_summary(policy),
        "cpu_percent": {name: round(100.0 * (cpu1[name] - cpu0[name]) / elapsed, 1) for name in cpu0},
        "episodes": len(window),
        "successes": successes,
        "success_rate": successes / len(window) if window else None,
        "sim_realtime_resyncs": int(sim.get("realtime_resyncs", "0")),
        "inference": policy.get("inference"),
        "executor": policy.get("executor"),
        "targets": TARGETS,
        "model": str(model),
        "task": task,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "log_dir": str(log_dir),
    }
    print_table(result)
    write_json(args.json, result)
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:8.3f}"


def print_table(result: dict[str, Any]) -> None:
    rows = [
        ("tick jitter p50 (ms)", result["tick_jitter_p50_ms"], None),
        ("tick jitter p99 (ms)", result["tick_jitter_p99_ms"], TARGETS["tick_jitter_p99_ms"]),
        ("obs->command p50 (ms)", result["obs_to_command_p50_ms"], TARGETS["obs_to_command_p50_ms"]),
        ("obs->command p99 (ms)", result["obs_to_command_p99_ms"], None),
        ("inference p50 (ms)", result["inference_p50_ms"], None),
        ("inference p99 (ms)", result["inference_p99_ms"], None),
    ]
    print(f"{'metric':<24}{'value':>9}  target")
    for name, value, target in rows:
        verdict = "" if target is None or value is None else f"<= {target:g} {'ok' if value <= target else 'MISSED'}"
        print(f"{name:<24}{_fmt(value)}  {verdict}")
    print(f"{'stage (policy_node)':<24}{'p50 ms':>9}{'p99 ms':>9}")
    for stage, values in result["stages"].items():
        print(f"  {stage:<22}{_fmt(values['p50_ms'])} {_fmt(values['p99_ms'])}")
    for name, percent in result["cpu_percent"].items():
        print(f"{'CPU ' + name + ' (%)':<24}{percent:9.1f}")
    rate = result["success_rate"]
    print(f"{'deadline misses':<24}{result['deadline_misses']:9d}")
    print(f"{'episodes (successes)':<24}{result['episodes']:9d}  ({result['successes']}; "
          f"{'n/a' if rate is None else f'{rate:.0%}'})")
    print(f"policy_node scheduling: {result['policy_scheduling']}, inference {result.get('inference')}, "
          f"executor {result.get('executor')}")
    print(f"load average {tuple(round(x, 2) for x in result['load_average'])} on {result['cpu_count']} cores")
