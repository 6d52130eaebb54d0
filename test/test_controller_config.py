"""ControllerConfig validation and ControllerCounters; both (and the constants) importable from runtime.controller."""

from __future__ import annotations

import pytest

from flow_policy_ros.contract import IIWA_JOINT_NAMES, ObservationSpec
from flow_policy_ros.errors import SafetyError
from flow_policy_ros.runtime import controller
from flow_policy_ros.runtime.controller_config import ControllerConfig, ControllerCounters

SPEC = ObservationSpec(joint_names=IIWA_JOINT_NAMES, fields=("joint_positions", "goal"))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"period_s": 0.0}, "control period"),
    ({"stale_timeout_s": 0.0}, "stale_timeout_s"),
    ({"rtc_margin_ticks": -1}, "rtc_margin_ticks"),
    ({"ood_margin": -1.0}, "margin"),
])
def test_bad_settings_are_refused_naming_the_value(kwargs, match):
    settings = {"observation": SPEC, "horizon": 8, "period_s": 0.02} | kwargs
    with pytest.raises(SafetyError, match=match):
        ControllerConfig(**settings)


def test_derived_values():
    config = ControllerConfig(SPEC, 8, 0.02, chunking="rtc", rtc_max_delay=3)
    assert config.rtc and config.period_ns == 20_000_000
    assert not ControllerConfig(SPEC, 8, 0.02).rtc


def test_counters_as_dict_has_the_integer_counters_only():
    counters = ControllerCounters()
    counters.ticks += 3
    counters.jitter_s.append(0.001)
    as_dict = counters.as_dict()
    assert as_dict["ticks"] == 3 and "jitter_s" not in as_dict and "inference_s" not in as_dict


def test_names_other_modules_import_from_the_controller_module():
    for name in ("ControllerConfig", "ControllerCounters", "EXECUTION_MODES", "STATES", "MEASURED_LIMIT_TOLERANCE_RAD",
                 "TRACKING_TOLERANCE_RAD", "PolicyController"):
        assert hasattr(controller, name), name
