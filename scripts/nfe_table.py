#!/usr/bin/env python3
"""Success versus network evaluations (issue 14, item 2): one checkpoint, several unrolled solvers.

For each (solver, steps) cell the checkpoint is exported with ``flow-policy export --solver S
--steps N`` (the same one-graph contract; parity-gated as always) and evaluated in process on the
same held-out episodes (``--seed``) through ``flow_policy_ros.sim.evaluate.evaluate``, with the
model's trained guidance scale and the default receding-horizon chunking. Network evaluations per
chunk (NFE) = N for Euler, 2N for midpoint and Heun; every NFE is one batched pass over both CFG
branches. ``chunk p50`` is the in-process ONNX Runtime predict() latency recorded during the
evaluation (one call every replan, so caches are as cold as in policy_node).

Writes each cell's report to ``OUT/<solver>_<steps>.json``, the exported graphs to
``OUT/<solver>_<steps>.onnx`` and the markdown table to ``OUT/table.md``; prints the table.

    .venv/bin/python scripts/nfe_table.py --checkpoint models/iiwa_reach_around.pt \\
        --task reach_around --episodes 100 --seed 0 --out runs/nfe_reach_around
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

#: (solver, steps) cells: Euler at N in {1, 2, 4, 10, 20}; midpoint and Heun at the same NFE (2N).
DEFAULT_CELLS: tuple[tuple[str, int], ...] = (
    ("euler", 1), ("euler", 2), ("euler", 4), ("euler", 10), ("euler", 20),
    ("midpoint", 1), ("midpoint", 2), ("midpoint", 5), ("midpoint", 10),
    ("heun", 1), ("heun", 2), ("heun", 5), ("heun", 10),
)

TABLE_HEADER = (
    "| solver | steps | NFE | success | 95% CI | peak accel (rad/s²) | peak jerk (rad/s³) | chunk p50 (ms) |\n"
    "|---|---|---|---|---|---|---|---|"
)


def nfe(solver: str, steps: int) -> int:
    """Network evaluations per chunk: N (Euler) or 2N (midpoint, Heun)."""
    return steps if solver == "euler" else 2 * steps


def parse_cell(text: str) -> tuple[str, int]:
    """``euler:4`` -> ("euler", 4)."""
    solver, _, steps = text.partition(":")
    if solver not in ("euler", "midpoint", "heun") or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SOLVER:STEPS, e.g. euler:4")
    return solver, int(steps)


def table_row(report: dict[str, Any], solver: str, steps: int) -> str:
    """One markdown row of a cell's eval-sim report."""
    lo, hi = report["success_ci95"]
    peaks = report.get("peaks") or {}
    accel, jerk = peaks.get("accel_peak_rad_s2"), peaks.get("jerk_peak_rad_s3")
    p50 = report["latency_ms"]["p50"]
    return (
        f"| {solver} | {steps} | {nfe(solver, steps)} | {report['success_rate']:.0%} "
        f"({report['successes']}/{report['episodes']}) | {lo:.0%}-{hi:.0%} "
        f"| {'-' if accel is None else f'{accel:.1f}'} | {'-' if jerk is None else f'{jerk:.0f}'} "
        f"| {'-' if p50 is None else f'{p50:.3f}'} |"
    )


def run_cell(checkpoint: Path, task: str, solver: str, steps: int, episodes: int, seed: int, out: Path,
             progress: bool) -> dict[str, Any]:
    """Export one (solver, steps) graph and evaluate it; returns the report without per-episode lists."""
    from flow_policy_ros.export.onnx_export import export_checkpoint
    from flow_policy_ros.runtime.onnx_policy import OnnxPolicy
    from flow_policy_ros.sim.closed_loop import LoopConfig, validate_config
    from flow_policy_ros.sim.evaluate import evaluate

    onnx_path = out / f"{solver}_{steps}.onnx"
    export_checkpoint(checkpoint, onnx_path, steps=steps, solver=solver, name=f"{checkpoint.stem}_{solver}{steps}")
    policy = OnnxPolicy(onnx_path, seed=seed)
    config = LoopConfig(guidance_scale=policy.metadata.guidance_scale)
    validate_config(config, policy.metadata)
    report, _ = evaluate(policy, task, episodes, seed, config, progress=progress, label=f"{solver} N={steps}")
    report.pop("per_episode")
    report["solver"], report["steps"], report["nfe"] = solver, steps, nfe(solver, steps)
    write_json(out / f"{solver}_{steps}.json", report)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint .pt (flow objective)")
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed in [0, 99]")
    parser.add_argument("--cells", type=parse_cell, nargs="+", default=list(DEFAULT_CELLS),
                        help="SOLVER:STEPS cells (default: Euler 1 2 4 10 20, midpoint and Heun 1 2 5 10)")
    parser.add_argument("--out", type=Path, required=True, help="directory for graphs, reports and table.md")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint}: file not found")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for solver, steps in args.cells:
        report = run_cell(args.checkpoint, args.task, solver, steps, args.episodes, args.seed, args.out,
                          progress=not args.no_progress)
        rows.append(table_row(report, solver, steps))
        print(rows[-1], flush=True)
    caption = f"{args.task}, {args.checkpoint.name}, {args.episodes} held-out episodes (eval seed {args.seed})"
    table = "\n".join([f"**{caption}**", "", TABLE_HEADER, *rows])
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
