"""One-line errors everywhere: every domain error class is exit 2 and one line from the CLI, third-party
failures are wrapped at their source (YAML, checkpoint weights), and the nodes report a bad parameter in
one line with exit 1 and no traceback."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, node_env
from model_factory import make_checkpoint, make_tiny_model, with_broken_output

from flow_policy_ros import errors
from flow_policy_ros.cli import main

DOMAIN_ERRORS = [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
                 if issubclass(cls, errors.FlowPolicyError)]


def test_every_domain_error_class_is_known():
    assert len(DOMAIN_ERRORS) >= 13 and errors.InvalidOutputError in DOMAIN_ERRORS


@pytest.mark.parametrize("cls", DOMAIN_ERRORS, ids=lambda c: c.__name__)
def test_every_domain_error_is_exit_2_with_one_line(cls, monkeypatch, capsys, tmp_path):
    from flow_policy_ros.cli import export as export_verb

    def run(args):
        raise cls("torch says:\n  line two\n\tline three")

    monkeypatch.setattr(export_verb, "run", run)
    code = main(["export", str(tmp_path / "c.pt"), "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err == "flow-policy export: error: torch says: line two line three\n"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flow_policy_ros", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=node_env(), timeout=300)


def _one_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr
    return proc.stderr


def test_config_and_checkpoint_failures_are_wrapped_at_their_source(tmp_path: Path):
    good = make_checkpoint(tmp_path / "good.pt")
    payload = torch.load(good, weights_only=True)
    payload["config"]["policy"]["hidden_dim"] = 48  # the weights no longer fit the config's network
    torch.save(payload, tmp_path / "mismatch.pt")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    (tmp_path / "type.yaml").write_text("policy: {horizon: abc}\n")
    _one_line(run_cli("export", str(tmp_path / "mismatch.pt"), "--out", str(tmp_path / "m.onnx")),
              "mismatch.pt: 'model' weights do not fit the network of its config", "size mismatch")
    _one_line(run_cli("train", str(tmp_path), "--config", str(tmp_path / "binary.yaml"), "--out", str(tmp_path / "o")),
              "binary.yaml: not valid YAML")
    _one_line(run_cli("train", str(tmp_path), "--config", str(tmp_path / "type.yaml"), "--out", str(tmp_path / "o")),
              "type.yaml: policy: invalid literal for int()")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- nodes


def plain_lines(proc: subprocess.CompletedProcess, node: str) -> list[str]:
    """The node's stderr without its ROS-logger copy of the error: that one line is ``[FATAL] ... [<node>]:
    exiting: <the same reason>`` (so the reason reaches /rosout and the ROS log files, see node_runner)."""
    lines = proc.stderr.strip().splitlines()
    fatal = [line for line in lines if line.startswith("[FATAL]")]
    plain = [line for line in lines if not line.startswith("[FATAL]")]
    assert len(fatal) == 1 and f"[{node}]: exiting: " in fatal[0], proc.stderr
    assert plain and fatal[0].split(": exiting: ", 1)[1] == plain[-1].split(": error: ", 1)[-1], proc.stderr
    return plain


def run_node(module: str, *params: str) -> subprocess.CompletedProcess:
    """A node with bad parameters fails during construction (no peer needed; the session's domain/localhost env)."""
    cmd = [sys.executable, "-m", module, "--ros-args"]
    for param in params:
        cmd += ["-p", param]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=node_env(), timeout=120)


@pytest.mark.parametrize("param, fragment", [
    ("guidance_scale:=9.0", "guidance_scale out of range"),
    ("control_rate_hz:=50", "of type 'INTEGER', expecting type 'DOUBLE'"),
    ("model_path:=/nonexistent.onnx", "/nonexistent.onnx: model file not found"),
    ("ood_margin:=-1.0", "ood_margin out of range"),
])
def test_policy_node_bad_parameter_is_one_line_exit_1(param, fragment):
    proc = run_node("flow_policy_ros.ros.policy_node", param)
    lines = plain_lines(proc, "flow_policy_node")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout and len(lines) == 1, proc.stderr
    assert lines[0].startswith("flow_policy_node: error: ") and fragment in lines[0], lines


def test_policy_node_refuses_a_model_with_invalid_output_in_one_line(tmp_path: Path):
    broken = with_broken_output(make_tiny_model(tmp_path / "m.onnx"), tmp_path / "nan.onnx", "nan")
    proc = run_node("flow_policy_ros.ros.policy_node", f"model_path:={broken}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(plain_lines(proc, "flow_policy_node")) == 1, proc.stderr
    assert "the load-time check call on a typical observation failed" in proc.stderr and "NaN/inf" in proc.stderr


def test_sim_node_bad_parameter_is_one_line_exit_1():
    proc = run_node("flow_policy_ros.ros.sim_node", "control_rate_hz:=50")
    lines = [line for line in plain_lines(proc, "sim_node") if not line.startswith("pybullet build time")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert "sim_node: error: " in lines[0] and "expecting type 'DOUBLE'" in lines[0]
