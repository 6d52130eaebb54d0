"""Test session set-up: keep DDS on this machine, in a domain of its own.

Set at import time, before any test module imports rclpy: every rclpy process of this
session (the test process and the nodes it starts) uses
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and a ``ROS_DOMAIN_ID`` picked from the pid, so
parallel sessions on the same machine do not hear each other.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from flow_policy_ros.ros.launch_harness import ros_param_arg

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(10 + os.getpid() % 80)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """torch with one CPU thread, as `flow-policy train/distill --threads 1` (their default): two
    threads per process on this shared 2-core machine made the in-process training tests several
    times slower (test_distill: 370 s vs 40 s under load)."""
    import torch

    torch.set_num_threads(1)
    yield


def ros_domain_id() -> int:
    """The ROS domain of this test session."""
    return int(os.environ["ROS_DOMAIN_ID"])


def node_env() -> dict[str, str]:
    """Environment for a node subprocess: this process's, unchanged, plus this session's domain."""
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(ros_domain_id())
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_policy_node(
    log_path: Path,
    params: Mapping[str, object] | None = None,
    params_file: Path | None = None,
    remaps: Mapping[str, str] | None = None,
) -> subprocess.Popen:
    """Start ``python -m flow_policy_ros.ros.policy_node`` from the repo root; output goes to ``log_path``."""
    cmd = [sys.executable, "-m", "flow_policy_ros.ros.policy_node", "--ros-args"]
    if params_file is not None:
        cmd += ["--params-file", str(params_file)]
    for name, value in (params or {}).items():
        cmd += ["-p", ros_param_arg(name, value)]
    for src, dst in (remaps or {}).items():
        cmd += ["-r", f"{src}:={dst}"]
    log = open(log_path, "w")  # noqa: SIM115 - closed by stop_process via the Popen
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=node_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    proc._log_file = log  # type: ignore[attr-defined]
    return proc


def stop_process(proc: subprocess.Popen, timeout_s: float = 5.0) -> None:
    """SIGINT the node (clean shutdown), SIGKILL its process group if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout_s)
    log = getattr(proc, "_log_file", None)
    if log is not None:
        log.close()


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator:
    """Factory fixture: ``node_process(params=..., ...)`` starts a policy node, always stopped after the test."""
    procs: list[subprocess.Popen] = []

    def start(**kwargs: object) -> subprocess.Popen:
        proc = start_policy_node(tmp_path / f"policy_node_{len(procs)}.log", **kwargs)  # type: ignore[arg-type]
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            stop_process(proc)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fuzzing counts of test_fuzz.py (what was thrown at the package, and how it answered)."""
    module = sys.modules.get("test_fuzz")
    counts = getattr(module, "FUZZ_COUNTS", None)
    if not counts:
        return
    terminalreporter.section("fuzzing (test/test_fuzz.py)")
    for campaign, counter in counts.items():
        terminalreporter.write_line(f"{campaign}: " + ", ".join(f"{key} {value}" for key, value in sorted(counter.items())))
