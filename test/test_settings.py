"""runtime/settings.py: one execution-settings table, and every surface derived from it agrees with it."""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path

import pytest

from flow_policy_ros.contract import IIWA_JOINT_NAMES, JointLimits, ModelIO, ObservationSpec
from flow_policy_ros.runtime.metadata import PolicyMetadata
from flow_policy_ros.runtime.settings import (
    DEFAULT_SETTINGS,
    ExecutionSettings,
    add_setting_flags,
    controller_config,
    in_process_settings,
    settings_from_args,
    settings_table,
)

MODELS = Path(__file__).resolve().parents[1] / "models"


def _metadata(rtc_max_delay: int = 0, guidance_scale: float = 1.5) -> PolicyMetadata:
    spec = ObservationSpec(joint_names=IIWA_JOINT_NAMES, fields=("joint_positions", "joint_velocities", "goal"))
    io = ModelIO(spec, IIWA_JOINT_NAMES, 16, 0.02, JointLimits())
    return PolicyMetadata("m", io, solver_steps=10, rtc_max_delay=rtc_max_delay, guidance_scale=guidance_scale)


def _node_defaults() -> dict[str, object]:
    """The node's declared parameter defaults, as declare_all hands them over (no running node needed)."""
    from rclpy.parameter import Parameter

    from flow_policy_ros.ros.policy_parameters import PARAMETERS

    def value(spec):
        if isinstance(spec.default, Parameter.Type):  # declared without a value
            return () if spec.default.name.endswith("_ARRAY") else None
        return tuple(spec.default) if isinstance(spec.default, list) else spec.default

    return {name: value(spec) for name, spec in PARAMETERS.items()}


def _eval_sim_parser() -> argparse.ArgumentParser:
    from flow_policy_ros.cli import eval_sim

    parser = argparse.ArgumentParser()
    eval_sim.configure_parser(parser)
    return parser


def test_node_and_eval_sim_expose_the_same_settings_with_the_same_defaults():
    """Every setting is a node parameter with the table's default; eval-sim has a flag for each one the
    in-process loop honours, with the same default; the node declares exactly the table plus its
    ROS-specific parameters."""
    from flow_policy_ros.ros.policy_parameters import NODE_PARAMETERS

    node = _node_defaults()
    table = {s.name: s.default for s in settings_table()}
    assert {k: node[k] for k in table} == table
    assert set(node) == set(table) | set(NODE_PARAMETERS) and not set(table) & set(NODE_PARAMETERS)

    args = vars(_eval_sim_parser().parse_args(["--model", "m.onnx", "--task", "reach"]))
    in_process = in_process_settings()
    assert {k: args[k] for k in in_process} == {k: node[k] for k in in_process}
    assert set(in_process) == {"chunking", "replan_every", "ensemble_decay", "guidance_scale", "max_velocity_scale",
                               "ood_margin", "output_margin", "rtc_margin_ticks", "rtc_min_prefix", "rtc_blend_ticks",
                               "inject_delay_ms", "density_hold_after"}
    assert not (set(table) - set(in_process)) & set(args), "eval-sim offers a flag the in-process loop ignores"


def test_node_parameters_carry_the_tables_docs_ranges_and_read_only_flags():
    from rcl_interfaces.msg import ParameterType

    from flow_policy_ros.ros.policy_parameters import PARAMETERS

    for row in settings_table():
        spec = PARAMETERS[row.name]
        assert row.setting.doc in spec.description
        assert (spec.low, spec.high, spec.read_only) == (row.setting.low, row.setting.high, row.setting.read_only)
        if row.setting.choices:
            assert str(list(row.setting.choices)) in spec.description
    descriptor = PARAMETERS["replan_every"].descriptor("replan_every")
    assert descriptor.integer_range[0].from_value == 1 and descriptor.type == ParameterType.PARAMETER_INTEGER
    assert not PARAMETERS["guidance_scale"].read_only


def test_the_loop_config_is_the_table():
    from flow_policy_ros.sim.closed_loop import LoopConfig

    assert LoopConfig is ExecutionSettings
    assert [f.name for f in fields(LoopConfig)] == [s.name for s in settings_table()]


def test_node_params_and_the_loop_build_the_same_controller_config():
    """One function builds ControllerConfig: the node's and the loop's configs differ only by the period
    the node's control_rate_hz gives."""
    from flow_policy_ros.ros.policy_parameters import PolicyNodeParams
    from flow_policy_ros.sim.closed_loop import LoopConfig

    meta = _metadata(rtc_max_delay=5)
    node = PolicyNodeParams(**{**_node_defaults(), "control_rate_hz": 25.0}).controller_config(meta)
    loop = controller_config(LoopConfig(), meta)
    assert replace(node, period_s=loop.period_s) == loop and node.period_s == 0.04 and loop.period_s == 0.02
    assert loop.chunking == "rtc" and loop.rtc_max_delay == 5
    assert loop.guidance_scale == 1.5, "unset guidance = the model's"
    assert controller_config(replace(DEFAULT_SETTINGS, guidance_scale=2.0), meta).guidance_scale == 2.0
    assert controller_config(DEFAULT_SETTINGS, meta, guidance_scale=0.5).guidance_scale == 0.5
    assert controller_config(DEFAULT_SETTINGS, _metadata()).chunking == "receding_horizon"


@pytest.mark.parametrize(("change", "message"), [
    ({"replan_every": 0}, r"replan_every must be in \[1, 1000\], got 0"),
    ({"chunking": "sometimes"}, r"chunking must be one of"),
    ({"guidance_scale": 7.0}, r"guidance_scale must be in \[0.0, 5.0\], got 7.0"),
    ({"inject_delay_ms": float("nan")}, r"inject_delay_ms must be finite"),
    ({"replan_every": 2.5}, r"replan_every must be of type int, got 2.5"),
])
def test_a_value_outside_the_table_is_refused_naming_the_setting(change, message):
    with pytest.raises(ValueError, match=message):
        ExecutionSettings(**change)


def test_node_params_name_a_bad_value_as_a_parameter():
    from flow_policy_ros.errors import SafetyError
    from flow_policy_ros.ros.policy_parameters import PolicyNodeParams

    with pytest.raises(SafetyError, match=r"parameter execution must be one of \('stream', 'trajectory'\), got 'x'"):
        PolicyNodeParams(**{**_node_defaults(), "execution": "x"})


def test_flags_parse_typed_with_aliases_and_are_checked_against_the_table():
    parser = argparse.ArgumentParser()
    names = in_process_settings()
    add_setting_flags(parser, names)
    args = parser.parse_args(["--guidance", "2", "--replan-every", "6", "--chunking", "temporal_ensemble"])
    settings = settings_from_args(args, names)
    assert (settings.guidance_scale, settings.replan_every, settings.chunking) == (2.0, 6, "temporal_ensemble")
    assert settings_from_args(parser.parse_args([]), names) == DEFAULT_SETTINGS
    with pytest.raises(ValueError, match="ood_margin must be in"):
        settings_from_args(parser.parse_args(["--ood-margin", "-1"]), names)
    with pytest.raises(SystemExit):  # choices come from the table too
        parser.parse_args(["--chunking", "sometimes"])


def test_eval_sim_refuses_a_setting_outside_the_table_in_one_line(tmp_path, capsys):
    from flow_policy_ros.cli import main

    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    assert main(["eval-sim", "--model", str(model), "--task", "reach", "--replan-every", "0", "--no-plots"]) == 2
    assert capsys.readouterr().err.strip() == \
        "flow-policy eval-sim: error: setting replan_every must be in [1, 1000], got 0"


def test_demo_execution_flag_comes_from_the_table():
    from flow_policy_ros.cli import demo

    parser = argparse.ArgumentParser()
    demo.configure_parser(parser)
    assert parser.parse_args([]).execution == DEFAULT_SETTINGS.execution
    assert parser.parse_args(["--execution", "trajectory"]).execution == "trajectory"
