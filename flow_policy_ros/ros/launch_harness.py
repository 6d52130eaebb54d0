"""``flow-policy demo``: sim_node + policy_node as two processes over ROS 2 (Fast DDS), closed loop.

Starts ``python -m flow_policy_ros.ros.sim_node`` and ``python -m flow_policy_ros.ros.policy_node`` with
the INSTALLED ``config/sim.yaml`` and ``config/policy.yaml`` (the files the launch file uses)
plus a few overrides (model, execution, task, episodes, recording), waits for the sim's
``episode_outcome`` messages, reads the policy's ``/diagnostics`` and prints success rate,
inference latency, tick jitter and obs→command latency. Both nodes are stopped cleanly
(SIGINT, then SIGKILL of their process group after 5 s); the exit status is 1 if a node died.

DDS environment. The node processes inherit this process's environment unchanged (the ROS 2
PyPI wheels re-launch Python at start-up to set LD_LIBRARY_PATH, so nothing may be stripped),
with two additions when the caller did not set them: ``ROS_DOMAIN_ID`` is picked for the run
from the pid (100-199, away from the 10-99 the Makefile and the tests use) so concurrent runs
do not hear each other, and ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` keeps DDS on this
machine. A caller's own values always win (on a robot the user's network settings apply);
the nodes themselves never set either.

Topic names are those of a real ros2_control setup (``config/ros2_control/``): in trajectory mode
both nodes are remapped to :data:`JTC_TRAJECTORY_TOPIC`, the topic of a JointTrajectoryController
named ``joint_trajectory_controller`` (so ``--record`` writes what ``config/train_reach_jtc.yaml``
reads); stream mode keeps ``/commands`` (what ``flow-policy collect`` writes and
``config/train_reach.yaml`` reads). With a shadow model a third node, ``flow_policy_shadow``, runs
it in shadow mode on the same joint states and goal (the same remaps; it publishes only to
``/flow_policy_shadow/preview/...``) while ``flow_policy_node`` drives the arm: the rehearsal of a
shadow run on a robot that something else moves.

The helpers here (:func:`ros_environment`, :class:`NodeProcesses`, :class:`LoopMonitor`) are
shared with ``flow-policy bench --ros`` (``ros_bench.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flow_policy_ros import paths
from flow_policy_ros.errors import UsageError

#: Domain ids picked for a run when the caller set none: 100 + pid % 100.
DOMAIN_BASE, DOMAIN_SPAN = 100, 100
#: Seconds allowed for both nodes to start and the first episode to begin.
STARTUP_BUDGET_S = 60.0
#: Upper bound on one episode (s): the task's 6 s limit, the reset pause and slack.
EPISODE_BUDGET_S = 10.0
STOP_TIMEOUT_S = 5.0
#: Seconds for the last messages of a node that exited with status 0 to arrive.
EXIT_GRACE_S = 2.0
#: The JointTrajectoryController's command topic (config/ros2_control/joint_trajectory_controller.yaml).
JTC_TRAJECTORY_TOPIC = "/joint_trajectory_controller/joint_trajectory"
#: Name of the policy node run in shadow mode next to the one that drives the arm.
SHADOW_NODE_NAME = "flow_policy_shadow"


def ros_environment(environ: Mapping[str, str] | None = None, pid: int | None = None) -> dict[str, str]:
    """The environment for rclpy processes of one run: ``environ`` unchanged, plus a per-run
    ``ROS_DOMAIN_ID`` and ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` where the caller set none."""
    env = dict(os.environ if environ is None else environ)
    if not env.get("ROS_DOMAIN_ID"):
        env["ROS_DOMAIN_ID"] = str(DOMAIN_BASE + (os.getpid() if pid is None else pid) % DOMAIN_SPAN)
    if not env.get("ROS_AUTOMATIC_DISCOVERY_RANGE"):
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return env


def ros_param_arg(name: str, value: object) -> str:
    """``name:=value`` for ``--ros-args -p`` (YAML literals: bools lower-case, lists in brackets)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        text = "[" + ",".join(json.dumps(v) if isinstance(v, str) else str(v) for v in value) + "]"
    else:
        text = str(value)
    return f"{name}:={text}"


class NodeProcesses:
    """Node subprocesses of one run, each logging to ``<log_dir>/<name>.log``; stopped by :meth:`stop_all`."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list[Any] = []

    def start(self, name: str, module: str, params_file: Path, overrides: Mapping[str, object],
              remaps: Mapping[str, str] | None = None) -> subprocess.Popen:
        cmd = [sys.executable, "-m", module, "--ros-args", "--params-file", str(params_file)]
        for key, value in overrides.items():
            cmd += ["-p", ros_param_arg(key, value)]
        for source, target in (remaps or {}).items():
            cmd += ["-r", f"{source}:={target}"]
        log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed in stop_all
        self._logs.append(log)
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def dead(self) -> dict[str, int]:
        """{name: exit status} of the nodes that have exited."""
        return {name: proc.returncode for name, proc in self.procs.items() if proc.poll() is not None}

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""

    def stop_all(self) -> None:
        """SIGINT every node (clean shutdown), SIGKILL its process group after ``STOP_TIMEOUT_S``."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT_S)
        for log in self._logs:
            log.close()


class LoopMonitor:
    """This process's rclpy listener: episode outcomes and the nodes' latest diagnostics."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        self._rclpy = rclpy
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node("flow_policy_demo_monitor", context=self.context)
        self.lock = threading.Lock()
        self.outcomes: list[dict[str, Any]] = []
        self.policy: dict[str, str] = {}
        self.shadow: dict[str, str] = {}  # a policy node in shadow mode
        self.sim: dict[str, str] = {}
        self.policy_updates = self.shadow_updates = 0
        outcomes = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(String, "episode_outcome", self._on_outcome, outcomes)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_outcome(self, msg: Any) -> None:
        with self.lock:
            self.outcomes.append(json.loads(msg.data))

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            with self.lock:
                if status.name.endswith(": policy") and values.get("shadow") == "true":
                    self.shadow, self.shadow_updates = values, self.shadow_updates + 1
                elif status.name.endswith(": policy"):
                    self.policy, self.policy_updates = values, self.policy_updates + 1
                elif status.name.endswith(": sim"):
                    self.sim = values

    def snapshot(self) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, str]]:
        with self.lock:
            return list(self.outcomes), dict(self.policy), dict(self.sim)

    def wait_for_policy_update(self, timeout_s: float, shadow: bool = False) -> None:
        """Wait until a diagnostics message newer than now arrives (or ``timeout_s``); ``shadow``: from
        the shadow node too."""
        with self.lock:
            seen = (self.policy_updates, self.shadow_updates)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if self.policy_updates > seen[0] and (not shadow or self.shadow_updates > seen[1]):
                    return
            time.sleep(0.05)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5.0)


def _ms(diag: Mapping[str, str], key: str) -> float | None:
    value = diag.get(key)
    return None if value in (None, "", "nan") else float(value)


def latency_summary(policy: Mapping[str, str]) -> dict[str, Any]:
    """The policy node's own measurements (ms) from its last diagnostics message."""
    return {
        "tick_jitter_p50_ms": _ms(policy, "tick_jitter_p50_ms"),
        "tick_jitter_p99_ms": _ms(policy, "tick_jitter_p99_ms"),
        "obs_to_command_p50_ms": _ms(policy, "obs_to_command_latency_p50_ms"),
        "obs_to_command_p99_ms": _ms(policy, "obs_to_command_latency_p99_ms"),
        "inference_p50_ms": _ms(policy, "inference_latency_p50_ms"),
        "inference_p99_ms": _ms(policy, "inference_latency_p99_ms"),
        "deadline_misses": int(policy.get("deadline_misses", "0")),
        "late_first_commands": int(policy.get("late_first_commands", "0")),
        "provider": policy.get("active_provider"),
        "provider_fallback_reason": policy.get("provider_fallback_reason"),
        "model_name": policy.get("model_name"),
        "model_hash": policy.get("model_hash"),
        "stages": stage_summary(policy),
        "policy_state": policy.get("state"),
        "policy_scheduling": policy.get("scheduling"),
    }


def stage_summary(policy: Mapping[str, str]) -> dict[str, dict[str, float | None]]:
    """The per-stage breakdown (ms) of policy_node's decision path from its diagnostics
    (``stage_<name>_p50_ms`` / ``_p99_ms``, see :mod:`flow_policy_ros.runtime.latency`), in path order."""
    from flow_policy_ros.runtime.latency import STAGES

    return {stage: {f"p{q}_ms": _ms(policy, f"stage_{stage}_p{q}_ms") for q in (50, 99)} for stage in STAGES}


def resolve_model(model: str | None, task: str = "reach") -> Path:
    """``model`` as an existing absolute path; None: the shipped model for ``task`` (:data:`paths.TASK_MODELS`)."""
    path = Path(model) if model else None
    if path is None:
        try:
            path = paths.default_model_path(paths.TASK_MODELS.get(task, paths.DEFAULT_MODEL))
        except FileNotFoundError as exc:
            raise UsageError(f"{exc}; pass --model PATH") from exc
    if not path.is_file():
        raise UsageError(f"--model {path}: file not found")
    return path.resolve()


def controller_remaps(execution: str) -> dict[str, str]:
    """The remaps of a real ros2_control setup for ``execution``: trajectory mode talks to
    :data:`JTC_TRAJECTORY_TOPIC`; stream mode keeps ``commands``."""
    return {"joint_trajectory": JTC_TRAJECTORY_TOPIC} if execution == "trajectory" else {}


def renamed_params_file(source: Path, node_name: str, target: Path) -> Path:
    """``source`` (a ``flow_policy_node: ros__parameters:`` file) with its section renamed to ``node_name``."""
    import yaml

    from flow_policy_ros.ros.policy_parameters import NODE_NAME

    document = yaml.safe_load(source.read_text())
    target.write_text(yaml.safe_dump({node_name: document[NODE_NAME]}))
    return target


def start_closed_loop(env: Mapping[str, str], log_dir: Path, model: Path, task: str, episodes: int,
                      execution: str, record: Path | None, thread_priority: int = 0,
                      seeds: list[int] | None = None,
                      policy_overrides: Mapping[str, object] | None = None,
                      shadow_model: Path | None = None) -> NodeProcesses:
    """Start sim_node and policy_node with the installed YAML files and this run's overrides
    (``thread_priority`` > 0: SCHED_FIFO for both nodes' control threads, see ``realtime.py``;
    ``seeds``: the episode seeds, default 0, 1, 2, ...; ``policy_overrides``: more policy_node
    parameters, e.g. ``inference_thread``; ``shadow_model``: also run this model in shadow mode
    as :data:`SHADOW_NODE_NAME`). Topics as on a robot: :func:`controller_remaps`."""
    nodes = NodeProcesses(env, log_dir)
    remaps = controller_remaps(execution)
    sim_overrides: dict[str, object] = {"task": task, "episodes": episodes, "thread_priority": thread_priority}
    if seeds is not None:
        sim_overrides["seeds"] = list(seeds)
    if record is not None:
        sim_overrides["record_path"] = str(record.resolve())
    nodes.start("sim_node", "flow_policy_ros.ros.sim_node", paths.config_path("sim.yaml"), sim_overrides, remaps)
    nodes.start("policy_node", "flow_policy_ros.ros.policy_node", paths.config_path("policy.yaml"),
                {"model_path": str(model), "execution": execution, "thread_priority": thread_priority,
                 **(policy_overrides or {})}, remaps)
    if shadow_model is not None:
        params = renamed_params_file(paths.config_path("policy.yaml"), SHADOW_NODE_NAME, log_dir / "shadow_policy.yaml")
        nodes.start("shadow_node", "flow_policy_ros.ros.policy_node", params,
                    {"model_path": str(shadow_model), "execution": execution, "shadow": True,
                     **(policy_overrides or {})}, {**remaps, "__node": SHADOW_NODE_NAME})
    return nodes


def run_loop(nodes: NodeProcesses, monitor: LoopMonitor, until: Callable[[list[dict[str, Any]]], bool],
             deadline_s: float, on_outcome: Callable[[dict[str, Any]], None] | None = None) -> str | None:
    """Wait until ``until(outcomes)``; returns why it stopped early ('died: ...', 'timeout') or None.

    A node that exits with status 0 (sim_node after its last episode) gets ``EXIT_GRACE_S`` for
    its last messages to arrive before its exit counts as dying early.
    """
    deadline = time.monotonic() + deadline_s
    reported = 0
    clean_exit_at: float | None = None
    while True:
        outcomes, _, _ = monitor.snapshot()
        for outcome in outcomes[reported:]:
            if on_outcome is not None:
                on_outcome(outcome)
        reported = len(outcomes)
        if until(outcomes):
            return None
        dead = nodes.dead()
        if dead and clean_exit_at is None and not any(dead.values()):
            clean_exit_at = time.monotonic()
        if dead and (any(dead.values()) or time.monotonic() - clean_exit_at > EXIT_GRACE_S):
            return "died: " + ", ".join(f"{name} exited with status {code}" for name, code in dead.items())
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(0.1)


def _print_outcome(outcome: dict[str, Any]) -> None:
    reached = outcome.get("time_to_goal_s")
    result = f"success in {reached:.2f} s" if outcome["success"] else f"failure ({outcome.get('final_distance_m', 0) * 100:.1f} cm off)"
    print(f"  episode {outcome['episode']} (seed {outcome['seed']}): {result}", flush=True)
