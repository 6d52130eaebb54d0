"""flow-policy robot-config and flow_policy_ros.policy.robot: joints and limits from a URDF.

The real iiwa URDF of pybullet_data (the arm the shipped models drive) and the Franka Panda's (soft
limits, a gripper with a mimic finger), plus small hand-written URDFs for each rule and error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pybullet_data
import pytest
import yaml

from flow_policy_ros.cli import main
from flow_policy_ros.errors import ConfigError
from flow_policy_ros.policy.config import IIWA_JOINT_NAMES, IIWA_POSITION_LOWER, ExperimentConfig, JointLimits
from flow_policy_ros.policy.robot import chain, parse_urdf, robot_section

REPO_ROOT = Path(__file__).resolve().parents[1]
IIWA_URDF = Path(pybullet_data.getDataPath()) / "kuka_iiwa" / "model.urdf"
PANDA_URDF = Path(pybullet_data.getDataPath()) / "franka_panda" / "panda.urdf"


def joint(name: str, kind: str, parent: str, child: str, limit: str | None = 'lower="-1" upper="1" velocity="4"',
          extra: str = "") -> str:
    limit_tag = "" if limit is None else f"<limit effort=\"10\" {limit}/>"
    return (f'<joint name="{name}" type="{kind}"><parent link="{parent}"/><child link="{child}"/>'
            f'<axis xyz="0 0 1"/>{limit_tag}{extra}</joint>')


def urdf_text(*joints: str, name: str = "toy") -> str:
    links = sorted({part.split('"')[1] for j in joints for part in j.split("link=")[1:]})
    return f'<robot name="{name}">' + "".join(f'<link name="{n}"/>' for n in links) + "".join(joints) + "</robot>"


def write(tmp_path: Path, text: str, name: str = "arm.urdf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["robot-config", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_iiwa_urdf_gives_the_shipped_models_joints_and_limits(tmp_path, capsys):
    """The pybullet_data iiwa: 7 revolute joints in chain order, its position limits, and velocity
    min(0.5 x 10, 1.5) = 1.5 rad/s: exactly the limits the shipped models were trained with."""
    out = tmp_path / "iiwa_robot.yaml"
    code, stdout, _ = run_cli(capsys, "--urdf", str(IIWA_URDF), "--out", str(out), "--json", str(tmp_path / "r.json"))
    assert code == 0 and str(out) in stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["urdf_velocity"], report["velocity_scale"], report["max_velocity"]) == ([10.0] * 7, 0.5, 1.5)
    text = out.read_text()
    assert str(IIWA_URDF) in text.splitlines()[0] and "0.5 x URDF <limit velocity>" in text
    policy = yaml.safe_load(text)["policy"]
    assert tuple(policy["action_joint_names"]) == tuple(policy["observation"]["joint_names"]) == IIWA_JOINT_NAMES
    limits = JointLimits(**policy["limits"])
    defaults = JointLimits()
    assert limits.velocity == defaults.velocity == (1.5,) * 7
    assert limits.lower == pytest.approx(IIWA_POSITION_LOWER, abs=1e-5)
    assert limits.upper == pytest.approx(defaults.upper, abs=1e-5)
    assert limits.lower[0] == -2.96705972839  # the URDF's digits, not rounded


def test_output_merges_into_a_training_config(tmp_path, capsys):
    """The snippet under a shipped recipe's policy section gives a valid config with those limits."""
    code, stdout, _ = run_cli(capsys, "--urdf", str(PANDA_URDF), "--velocity-scale", "0.25")
    assert code == 0
    robot = yaml.safe_load(stdout)["policy"]
    recipe = yaml.safe_load((REPO_ROOT / "config" / "train_reach.yaml").read_text())
    recipe["policy"]["observation"]["joint_names"] = robot["observation"]["joint_names"]
    recipe["policy"]["action_joint_names"] = robot["action_joint_names"]
    recipe["policy"]["limits"] = robot["limits"]
    config = ExperimentConfig.from_dict(recipe)
    assert config.policy.action_dim == 8
    assert config.policy.limits.velocity[0] == pytest.approx(0.25 * 2.175)


def test_panda_soft_limits_tighten_and_the_mimic_finger_is_skipped():
    section = robot_section(parse_urdf(PANDA_URDF.read_text(), "panda.urdf"))
    assert section.joint_names == tuple(f"panda_joint{i}" for i in range(1, 8)) + ("panda_finger_joint1",)
    i4 = section.joint_names.index("panda_joint4")
    assert (section.limits.lower[i4], section.limits.upper[i4]) == (-3.0718, -0.0698)  # soft, inside [-3.1416, 0]
    assert section.soft_limited[i4] and not section.soft_limited[-1]
    assert section.limits.velocity[-1] == pytest.approx(0.1)  # 0.5 x 0.2 m/s, under the cap
    assert section.limits.velocity[4] == pytest.approx(1.305)


def test_velocity_scale_and_cap():
    urdf = parse_urdf(urdf_text(joint("a", "revolute", "base", "l1", 'lower="-1" upper="1" velocity="4"'),
                                joint("b", "revolute", "l1", "l2", 'lower="-1" upper="1" velocity="1"')), "toy.urdf")
    assert robot_section(urdf).limits.velocity == (1.5, 0.5)
    assert robot_section(urdf, velocity_scale=1.0, max_velocity=None).limits.velocity == (4.0, 1.0)
    assert robot_section(urdf, velocity_scale=0.25, max_velocity=0.8).limits.velocity == (0.8, 0.25)


def test_fixed_and_mimic_joints_are_skipped_and_order_is_the_chain():
    """Joints listed out of order in the file still come out root to tip; fixed and mimic ones are skipped."""
    text = urdf_text(
        joint("wrist", "revolute", "l2", "l3"),
        joint("mount", "fixed", "world", "base", None),
        joint("shoulder", "revolute", "base", "l1"),
        joint("elbow", "prismatic", "l1", "l2", 'lower="0" upper="0.3" velocity="0.5"'),
        joint("finger_left", "revolute", "l3", "fl", 'lower="0" upper="0.5" velocity="1"'),
        joint("finger_right", "revolute", "l3", "fr", 'lower="0" upper="0.5" velocity="1"',
              '<mimic joint="finger_left" multiplier="1"/>'),
        joint("tool", "fixed", "l3", "tool0", None),
    )
    urdf = parse_urdf(text, "toy.urdf")
    assert chain(urdf) == ["shoulder", "elbow", "wrist", "finger_left"]
    assert chain(urdf, tip_link="tool0") == ["shoulder", "elbow", "wrist"]
    assert chain(urdf, base_link="l1", tip_link="l3") == ["elbow", "wrist"]
    section = robot_section(urdf, joints=["wrist", "shoulder"])
    assert section.joint_names == ("wrist", "shoulder")


@pytest.mark.parametrize(("text", "kwargs", "message"), [
    (urdf_text(joint("a", "revolute", "b", "l1"), joint("spin", "continuous", "l1", "l2", 'velocity="3"')), {},
     "'spin' is continuous.*--continuous-limit"),
    (urdf_text(joint("a", "revolute", "b", "l1", None)), {}, "'a' .revolute. has no <limit>"),
    (urdf_text(joint("a", "revolute", "b", "l1", 'upper="1" velocity="1"')), {}, "'a': <limit> lacks lower"),
    (urdf_text(joint("a", "revolute", "b", "l1", 'lower="1" upper="1" velocity="1"')), {}, "lower limit 1.0 is not below"),
    (urdf_text(joint("a", "revolute", "b", "l1", 'lower="-1" upper="1"')), {"max_velocity": None}, "no positive velocity"),
    (urdf_text(joint("a", "revolute", "b", "l1", 'lower="x" upper="1" velocity="1"')), {}, "lower='x' is not a number"),
    (urdf_text(joint("a", "revolute", "b", "l1"), joint("m", "revolute", "l1", "l2", extra='<mimic joint="a"/>')),
     {"joints": ["a", "m"]}, "'m' mimics 'a'"),
    (urdf_text(joint("a", "revolute", "b", "l1"), joint("f", "fixed", "l1", "l2", None)), {"joints": ["f"]},
     "'f' is fixed"),
    (urdf_text(joint("a", "revolute", "b", "l1")), {"joints": ["nope"]}, "no joint 'nope'"),
    (urdf_text(joint("a", "revolute", "b", "l1")), {"joints": ["a", "a"]}, "more than once"),
    (urdf_text(joint("a", "revolute", "b", "l1"), joint("x", "revolute", "l1", "left"), joint("y", "revolute", "l1", "right")),
     {}, r"branches .*\['left', 'right'\].*--tip-link"),
    (urdf_text(joint("a", "revolute", "b", "l1")), {"tip_link": "tool0"}, "--tip-link 'tool0' is not a link"),
    (urdf_text(joint("a", "revolute", "b", "l1"), joint("c", "revolute", "l1", "l2")), {"base_link": "l2", "tip_link": "l1"},
     "--tip-link 'l1' is not below --base-link 'l2'"),
    (urdf_text(joint("f", "fixed", "b", "l1", None)), {}, "no movable joint"),
    (urdf_text(joint("a", "revolute", "b", "l1")), {"velocity_scale": 1.5}, r"--velocity-scale must be in \(0, 1\]"),
    ("<robot name='x'><link name='a'/></robot>", {}, "has no <joint>"),
    ("<sdf/>", {}, "root element is <sdf>"),
    ("<robot", {}, "not valid URDF XML"),
])
def test_bad_urdfs_name_the_joint_and_the_problem(text, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        robot_section(parse_urdf(text, "bad.urdf"), **kwargs)


def test_continuous_joint_with_a_given_range():
    urdf = parse_urdf(urdf_text(joint("spin", "continuous", "b", "l1", 'velocity="2"')), "toy.urdf")
    section = robot_section(urdf, continuous_limit=3.0)
    assert (section.limits.lower, section.limits.upper, section.limits.velocity) == ((-3.0,), (3.0,), (1.0,))


def test_names_that_yaml_would_misread_are_quoted(tmp_path):
    urdf = parse_urdf(urdf_text(joint("on", "revolute", "b", "l1"), joint("1", "revolute", "l1", "l2"),
                                joint("joint a1", "revolute", "l2", "l3")), "toy.urdf")
    policy = yaml.safe_load(robot_section(urdf).to_yaml())["policy"]
    assert policy["action_joint_names"] == ["on", "1", "joint a1"]


@pytest.mark.parametrize(("args", "message"), [
    (["--urdf", "missing.urdf"], "--urdf missing.urdf: file not found"),
    (["--urdf", "{bad}", "--velocity-scale", "0"], "--velocity-scale must be in (0, 1], got 0.0"),
    (["--urdf", "{bad}", "--max-velocity", "-1"], "--max-velocity -1.0: must be >= 0"),
    (["--urdf", "{continuous}"], "'spin' is continuous"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, urdf_text(joint("a", "revolute", "b", "l1")), "bad.urdf")
    write(tmp_path, urdf_text(joint("spin", "continuous", "b", "l1")), "continuous.urdf")
    args = [a.replace("{bad}", "bad.urdf").replace("{continuous}", "continuous.urdf") for a in args]
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err


# --------------------------------------------------------------------------- limits must be the arm's own

OTHER_ARM = [f"joint_a{i}" for i in range(1, 8)]


def _recipe_for(names: list[str], limits: dict | None) -> dict:
    recipe = yaml.safe_load((REPO_ROOT / "config" / "train_reach.yaml").read_text())
    recipe["policy"]["observation"]["joint_names"] = names
    recipe["policy"]["action_joint_names"] = names
    if limits is not None:
        recipe["policy"]["limits"] = limits
    return recipe


@pytest.mark.parametrize(("names", "limits", "message"), [
    (OTHER_ARM, None, r"policy.limits is not given: the action joints \['joint_a1', 'joint_a2', 'joint_a3', '...'\]"),
    (list(IIWA_JOINT_NAMES[::-1]), None, "policy.limits is not given"),  # the iiwa's joints in another order
    (OTHER_ARM, {"velocity": [1.0] * 7}, "policy.limits lacks lower/upper"),
])
def test_other_arms_joints_without_limits_are_refused(tmp_path, names, limits, message):
    path = tmp_path / "my_arm.yaml"
    path.write_text(yaml.safe_dump(_recipe_for(names, limits)))
    with pytest.raises(ConfigError, match=f"my_arm.yaml: {message}.*flow-policy robot-config"):
        ExperimentConfig.from_yaml(path)


def test_iiwa_joints_keep_their_defaults_and_given_limits_are_used(tmp_path):
    assert ExperimentConfig.from_dict(_recipe_for(list(IIWA_JOINT_NAMES), None)).policy.limits == JointLimits()
    limits = {"lower": [-1.0] * 7, "upper": [1.0] * 7, "velocity": [0.5] * 7}
    assert ExperimentConfig.from_dict(_recipe_for(OTHER_ARM, limits)).policy.limits == JointLimits(**limits)


def test_train_without_the_arms_limits_stops_with_one_line(tmp_path, capsys):
    """`flow-policy train` on another arm's config without limits: exit 2 before reading any data."""
    path = tmp_path / "my_arm.yaml"
    path.write_text(yaml.safe_dump(_recipe_for(OTHER_ARM, None)))
    (tmp_path / "bags").mkdir()
    code = main(["train", str(tmp_path / "bags"), "--config", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "policy.limits is not given" in err and "flow-policy robot-config --urdf" in err
    assert not (tmp_path / "run").exists()
