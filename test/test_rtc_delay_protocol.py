"""scripts/rtc_delay_protocol.py: the replan rule of the protocol and its table rows (no simulation)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def _script() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "scripts" / "rtc_delay_protocol.py"
    spec = importlib.util.spec_from_file_location("rtc_delay_protocol", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_cell_runs_the_default_settings_and_the_grid_reaches_300_ms() -> None:
    module = _script()
    assert module.DELAYS_MS == (0.0, 40.0, 100.0, 200.0, 300.0)
    assert not hasattr(module, "replan_every_for")  # no hand-set replan_every (issue 21)


def _report(chunking: str, ratio: float | None) -> dict:
    return {
        "chunking": chunking, "inject_delay_ms": 200.0, "replan_every": 11, "success_rate": 0.9, "successes": 45,
        "episodes": 50, "success_ci95": [0.786, 0.957], "seam_smoothness": {"jerk_seam_to_inside_ratio": ratio},
        "peaks": {"accel_peak_rad_s2": 12.345, "jerk_peak_rad_s3": 678.9}, "limiter_clipped_fraction": 0.0123,
        "controller": {"rtc_late_used": 2, "rtc_late_discarded": 1, "inference_requests": 10, "rtc_prefix_ticks": 45,
                       "deadline_fallbacks": 3},
    }


def test_table_rows_match_the_header_and_show_rtc_counters_only_for_rtc() -> None:
    module = _script()
    table = module.format_table([_report("rtc", 1.05), _report("receding_horizon", None)], "caption", expert_accel=10.0)
    lines = table.splitlines()
    assert lines[0] == "**caption**"
    columns = lines[2].count("|")
    rtc_row, rh_row = lines[4], lines[5]
    assert rtc_row.count("|") == columns and rh_row.count("|") == columns
    assert rtc_row == "| rtc | 200 | 90.0% (45/50) | 79%-96% | 1.05 | 12.3 | 1.23 | 679 | 1.23% | 4.5 | 2 / 1 | 3 |"
    assert rh_row.endswith("| - | 12.3 | 1.23 | 679 | 1.23% | - | - | 3 |")
