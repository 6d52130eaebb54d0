#!/usr/bin/env python3
"""Side-by-side closed-loop evaluation of several ONNX policies and guidance scales on the same episodes.

Every (model, w) run uses the same evaluation episode seeds (``--seed``, see
``flow_policy_ros.sim.closed_loop.eval_episode_seeds``) and, per episode, the same noise
stream (reseeded with the episode seed), so differences come from the policies, not the draw.
Runs in process through ``flow_policy_ros.sim.evaluate.evaluate`` (no subprocess), prints a
markdown table (model, w, success %, 95 % Wilson CI, successful left/right routes, peak
acceleration and jerk, seam jerk ratio, p50 latency), with the scripted expert as the first row
(same episodes through the same controller) and writes every run's report with ``--json`` (and the table with ``--markdown``).

Regression-objective models (``objective: regression`` in the metadata) are baselines: they run
at their default w only, unless ``--sweep-regression`` is given.

    .venv/bin/python scripts/compare_policies.py --task reach_around --episodes 50 --seed 0 \\
        --model models/iiwa_reach_around_regression.onnx --model models/iiwa_reach_around.onnx \\
        --guidance 0 1 1.5 2 3 --json eval/compare_reach_around.json --markdown eval/compare_reach_around.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flow_policy_ros.runtime.chunking import CHUNKING_MODES, DEFAULT_REPLAN_EVERY  # noqa: E402
from flow_policy_ros.runtime.onnx_policy import OnnxPolicy  # noqa: E402
from flow_policy_ros.sim.closed_loop import LoopConfig, eval_episode_seeds, validate_config  # noqa: E402
from flow_policy_ros.sim.evaluate import evaluate, evaluate_reference  # noqa: E402
from flow_policy_ros.sim.tasks import TASKS  # noqa: E402

TABLE_HEADER = (
    "| model | objective | w | success | 95% CI | left / right | peak accel (rad/s²) | peak jerk (rad/s³) "
    "| seam jerk ratio | p50 latency (ms) |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def guidance_values(policy: OnnxPolicy, requested: list[float] | None, sweep_regression: bool) -> list[float]:
    """Guidance scales to run ``policy`` at: the requested list, or the model's default w."""
    meta = policy.metadata
    if not requested or (meta.objective == "regression" and not sweep_regression):
        return [meta.guidance_scale]
    return list(requested)


def table_row(report: dict[str, Any]) -> str:
    """One markdown row of a run's report."""
    lo, hi = report["success_ci95"]
    ratio = report["seam_smoothness"]["jerk_seam_to_inside_ratio"]
    modes = f"{report['modes']['left']} / {report['modes']['right']}" if report["task"] == "reach_around" else "-"
    p50 = report["latency_ms"]["p50"]
    peaks = report.get("peaks") or {}
    accel, jerk = peaks.get("accel_peak_rad_s2"), peaks.get("jerk_peak_rad_s3")
    w = report["guidance_scale"]
    return (
        f"| {report['model']['name']} | {report['model']['objective']} | {'-' if w is None else f'{w:g}'} "
        f"| {report['success_rate']:.0%} ({report['successes']}/{report['episodes']}) | {lo:.0%}-{hi:.0%} | {modes} "
        f"| {'-' if accel is None else f'{accel:.1f}'} | {'-' if jerk is None else f'{jerk:.0f}'} "
        f"| {'-' if ratio is None else f'{ratio:.2f}'} | {'-' if p50 is None else f'{p50:.2f}'} |"
    )


def compare(models: list[Path], task: str, episodes: int, seed: int, guidance: list[float] | None, chunking: str,
            replan_every: int, sweep_regression: bool = False, progress: bool = True,
            reference: bool = False) -> list[dict[str, Any]]:
    """Reports (without per-episode lists) of every (model, w) run, in order; with ``reference``, the
    scripted expert first (same episodes, same controller, the first model's chunk shape)."""
    reports = []
    if reference:
        config = LoopConfig(chunking="receding_horizon" if chunking == "rtc" else chunking, replan_every=replan_every)
        expert_report = evaluate_reference(OnnxPolicy(models[0], seed=seed), task, episodes, seed, config, progress=progress)
        expert_report["guidance_scale"] = None
        reports.append(expert_report)
    for path in models:
        policy = OnnxPolicy(path, seed=seed)
        for w in guidance_values(policy, guidance, sweep_regression):
            config = LoopConfig(chunking=chunking, replan_every=replan_every, guidance_scale=w)
            validate_config(config, policy.metadata)
            report, _ = evaluate(policy, task, episodes, seed, config, progress=progress, label=f"{policy.metadata.name} w={w:g}")
            report.pop("per_episode")
            reports.append(report)
    return reports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", required=True, help="ONNX policy (repeat for several)")
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed in [0, 99]")
    parser.add_argument("--guidance", type=float, nargs="+", default=None, help="guidance scales w (default: each model's)")
    parser.add_argument("--chunking", choices=CHUNKING_MODES, default="receding_horizon")
    parser.add_argument("--replan-every", type=int, default=DEFAULT_REPLAN_EVERY)
    parser.add_argument("--sweep-regression", action="store_true", help="also sweep w for regression baselines")
    parser.add_argument("--no-reference", action="store_true", help="leave out the scripted-expert row")
    parser.add_argument("--json", type=Path, help="write all reports here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    missing = [str(m) for m in args.model if not m.is_file()]
    if missing:
        parser.error(f"--model file(s) not found: {missing}")
    try:
        eval_episode_seeds(args.seed, args.episodes)
    except ValueError as exc:
        parser.error(str(exc))
    reports = compare(args.model, args.task, args.episodes, args.seed, args.guidance, args.chunking, args.replan_every,
                      args.sweep_regression, progress=not args.no_progress, reference=not args.no_reference)
    seeds = eval_episode_seeds(args.seed, args.episodes)
    caption = (f"{args.task}, {args.episodes} episodes (seeds {seeds[0]}..{seeds[-1]}), {args.chunking}, "
               f"replan every {args.replan_every}")
    table = "\n".join([f"**{caption}**", "", TABLE_HEADER, *(table_row(r) for r in reports)])
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        payload = {"task": args.task, "episodes": args.episodes, "seed": args.seed, "chunking": args.chunking,
                   "replan_every": args.replan_every, "runs": reports}
        args.json.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
