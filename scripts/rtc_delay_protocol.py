#!/usr/bin/env python3
"""The real-time chunking delay protocol (issue 11, after arXiv 2506.07339) in PyBullet, in process.

Grid: chunking in {receding_horizon, temporal_ensemble, rtc} x injected inference delay (ms, sim
time: each chunk becomes available that long after its request), all with the SAME model (an
RTC-trained one; the two baselines sample plainly, d = 0) on the same evaluation episodes
(``--seed``). Default settings only (issue 21): ``replan_every`` is the table's default in every
cell; rtc's execution horizon follows the measured delay by itself (s = max(replan_every, d)).
With ``--reference`` the scripted expert runs once on the same episodes (through the same
controller, no delay) and each row gives its peak acceleration as a multiple of the expert's.

Runs every cell through ``flow_policy_ros.sim.evaluate.evaluate`` (one process, one job), writes
each cell's report (without per-episode lists) to ``OUT/<chunking>_<delay>.json`` (the same
report as ``flow-policy eval-sim --json``) and prints the markdown table (also to
``OUT/table.md``).

    .venv/bin/python scripts/rtc_delay_protocol.py --model runs/iiwa_reach_around_rtc.onnx \\
        --task reach_around --episodes 50 --seed 0 --out runs/rtc_proto
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flow_policy_ros.reports import write_json  # noqa: E402
from flow_policy_ros.sim.tasks import TASKS  # noqa: E402

MODES: tuple[str, ...] = ("receding_horizon", "temporal_ensemble", "rtc")
DELAYS_MS: tuple[float, ...] = (0.0, 40.0, 100.0, 200.0, 300.0)

TABLE_HEADER = (
    "| chunking | delay (ms) | success | 95% CI | seam/inside jerk | peak accel (rad/s²) | × expert "
    "| peak jerk (rad/s³) | limiter clipped | mean prefix | late used / dropped | deadline fallbacks |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table_row(report: dict[str, Any], expert_accel: float | None = None) -> str:
    """One markdown row of a cell's eval-sim report (``expert_accel``: the expert's peak, rad/s²)."""
    lo, hi = report["success_ci95"]
    peaks = report.get("peaks") or {}
    counters = report.get("controller") or {}
    rtc = report["chunking"] == "rtc"
    accel = peaks.get("accel_peak_rad_s2")
    ratio = accel / expert_accel if accel is not None and expert_accel else None
    requests = counters.get("inference_requests", 0)
    prefix = counters.get("rtc_prefix_ticks", 0) / requests if rtc and requests else None
    late = f"{counters.get('rtc_late_used', 0)} / {counters.get('rtc_late_discarded', 0)}" if rtc else "-"
    return (
        f"| {report['chunking']} | {report['inject_delay_ms']:g} "
        f"| {report['success_rate']:.1%} ({report['successes']}/{report['episodes']}) | {lo:.0%}-{hi:.0%} "
        f"| {_num(report['seam_smoothness']['jerk_seam_to_inside_ratio'], '.2f')} "
        f"| {_num(accel, '.1f')} | {_num(ratio, '.2f')} | {_num(peaks.get('jerk_peak_rad_s3'), '.0f')} "
        f"| {report['limiter_clipped_fraction']:.2%} | {_num(prefix, '.1f')} | {late} "
        f"| {counters.get('deadline_fallbacks', 0)} |"
    )


def format_table(reports: list[dict[str, Any]], caption: str, expert_accel: float | None = None) -> str:
    """The markdown table of the grid, one row per cell in the order given."""
    return "\n".join([f"**{caption}**", "", TABLE_HEADER, *(table_row(r, expert_accel) for r in reports)])


def run_grid(model: Path, task: str, episodes: int, seed: int, modes: list[str], delays_ms: list[float], out: Path,
             progress: bool = False) -> list[dict[str, Any]]:
    """Evaluate every (delay, mode) cell; returns the reports (per-episode lists dropped) in order."""
    from flow_policy_ros.runtime.onnx_policy import OnnxPolicy
    from flow_policy_ros.sim.closed_loop import LoopConfig, validate_config
    from flow_policy_ros.sim.evaluate import evaluate, format_summary

    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for delay in delays_ms:
        for mode in modes:
            policy = OnnxPolicy(model, seed=seed)  # a fresh policy per cell: as one eval-sim invocation
            config = LoopConfig(chunking=mode, inject_delay_ms=delay)  # every other setting: the default
            validate_config(config, policy.metadata)
            report, _ = evaluate(policy, task, episodes, seed, config, progress=progress, label=f"{mode} +{delay:g} ms")
            report.pop("per_episode")
            write_json(out / f"{mode}_{delay:g}.json", report)
            print(format_summary(report), file=sys.stderr, flush=True)
            reports.append(report)
    return reports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="RTC-trained ONNX policy")
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed in [0, 99]")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--delays-ms", type=float, nargs="+", default=list(DELAYS_MS))
    parser.add_argument("--out", type=Path, required=True, help="directory for the per-cell reports and table.md")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--reference", action="store_true", help="run the scripted expert once for the × expert column")
    args = parser.parse_args()
    if not args.model.is_file():
        parser.error(f"--model {args.model}: file not found")
    expert_accel = None
    if args.reference:
        from flow_policy_ros.runtime.onnx_policy import OnnxPolicy
        from flow_policy_ros.sim.closed_loop import LoopConfig
        from flow_policy_ros.sim.evaluate import evaluate_reference

        reference = evaluate_reference(OnnxPolicy(args.model, seed=args.seed), args.task, args.episodes, args.seed,
                                       LoopConfig(), progress=args.progress)
        write_json(args.out / "expert.json", reference)
        expert_accel = reference["peaks"]["accel_peak_rad_s2"]
    reports = run_grid(args.model, args.task, args.episodes, args.seed, args.modes, args.delays_ms, args.out, args.progress)
    seeds = reports[0]["episode_seeds"] if reports else []
    caption = (f"{args.task}, {args.episodes} episodes per cell (seeds {seeds[0]}..{seeds[-1]}), "
               f"model {reports[0]['model']['name']}" if reports else args.task)
    if expert_accel is not None:
        caption += f"; scripted expert peak accel {expert_accel:.1f} rad/s²"
    table = format_table(reports, caption, expert_accel)
    print(table)
    (args.out / "table.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
