"""scripts/rtc_delay_protocol.py: the replan rule of the protocol and its table rows (no simulation)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest


def _script() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "scripts" / "rtc_delay_protocol.py"
    spec = importlib.util.spec_from_file_location("rtc_delay_protocol", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("delay_ms", "expected"), [(0, 4), (40, 4), (60, 4), (61, 5), (100, 6), (200, 11)])
def test_replan_every_leaves_room_for_the_rtc_prefix(delay_ms: float, expected: int) -> None:
    assert _script().replan_every_for(delay_ms, 0.02) == expected


def _report(chunking: str, ratio: float | None) -> dict:
    return {
        "chunking": chunking, "inject_delay_ms": 200.0, "replan_every": 11, "success_rate": 0.9, "successes": 45,
        "episodes": 50, "success_ci95": [0.786, 0.957], "seam_smoothness": {"jerk_seam_to_inside_ratio": ratio},
        "peaks": {"accel_peak_rad_s2": 12.345, "jerk_peak_rad_s3": 678.9}, "limiter_clipped_fraction": 0.0123,
        "controller": {"rtc_late_chunks": 2, "rtc_prefix_broken": 0},
    }


def test_table_rows_match_the_header_and_show_rtc_counters_only_for_rtc() -> None:
    module = _script()
    table = module.format_table([_report("rtc", 1.05), _report("receding_horizon", None)], "caption")
    lines = table.splitlines()
    assert lines[0] == "**caption**"
    columns = lines[2].count("|")
    rtc_row, rh_row = lines[4], lines[5]
    assert rtc_row.count("|") == columns and rh_row.count("|") == columns
    assert rtc_row == "| rtc | 200 | 11 | 90% (45/50) | 79%-96% | 1.05 | 12.3 | 679 | 1.23% | 2 | 0 |"
    assert rh_row.endswith("| - | 12.3 | 679 | 1.23% | - | - |")
