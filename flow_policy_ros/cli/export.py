"""``flow-policy export``: the command-line verb (arguments, progress, report) over :mod:`flow_policy_ros.export.onnx_export`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flow_policy_ros.cli import write_json
from flow_policy_ros.errors import UsageError
from flow_policy_ros.export.density_export import DEFAULT_ALPHA, DensityExport
from flow_policy_ros.export.onnx_export import (
    DEFAULT_OPSET,
    PARITY_TOLERANCE,
    export_checkpoint,
)
from flow_policy_ros.policy.density import DEFAULT_SOLVER, DEFAULT_STEPS
from flow_policy_ros.policy.flow import SOLVERS


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint .pt written by `flow-policy train`")
    parser.add_argument("--out", required=True, help="output .onnx path (its directory must exist)")
    parser.add_argument("--steps", type=int, help="solver steps N to unroll (default: the config's solver_steps)")
    parser.add_argument("--solver", choices=SOLVERS, default="euler",
                        help="ODE solver unrolled in the graph: euler (N network evaluations), midpoint or heun (2N), rk4 (4N)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= 17, default {DEFAULT_OPSET})")
    parser.add_argument("--name", help="model name in the metadata (default: output file stem)")
    parser.add_argument("--noise-scale", type=float,
                        help="sampling temperature tau in [0, 1] baked into the graph (default: the config's policy.noise_scale)")
    parser.add_argument("--density-calibration", type=Path, default=None,
                        help="held-out episodes (never trained on) to calibrate the observation density's threshold on; "
                             "the checkpoint's density is then exported as output observation_log_likelihood")
    parser.add_argument("--density-alpha", type=float, default=DEFAULT_ALPHA,
                        help=f"false-alarm rate per held-out episode of the density threshold (default {DEFAULT_ALPHA})")
    parser.add_argument("--density-solver", choices=SOLVERS, default=DEFAULT_SOLVER,
                        help=f"solver of the log-likelihood integration (default {DEFAULT_SOLVER})")
    parser.add_argument("--density-steps", type=int, default=DEFAULT_STEPS,
                        help=f"steps of the log-likelihood integration (default {DEFAULT_STEPS})")
    parser.add_argument("--no-density", action="store_true",
                        help="export a checkpoint that has a density without it (range guard only)")
    parser.add_argument("--json", help="write the parity report and metadata to this JSON file")


def density_request(args: argparse.Namespace) -> DensityExport | None:
    """The density to export, or None; a checkpoint with a density needs --density-calibration or --no-density."""
    if args.no_density:
        if args.density_calibration is not None:
            raise UsageError("--no-density and --density-calibration contradict each other")
        return None
    if args.density_calibration is None:
        from flow_policy_ros.policy.checkpoint import load_checkpoint

        if Path(args.checkpoint).is_file() and load_checkpoint(args.checkpoint).density is not None:
            raise UsageError(f"{args.checkpoint} has an observation density: pass --density-calibration HELD_OUT_DATA "
                             "to export it, or --no-density")
        return None
    return DensityExport(args.density_calibration, args.density_alpha, args.density_solver, args.density_steps)


def run(args: argparse.Namespace) -> int:
    metadata, rows = export_checkpoint(args.checkpoint, args.out, args.steps, args.opset, args.name, args.solver,
                                       args.noise_scale, density=density_request(args))
    size_kb = Path(args.out).stat().st_size / 1024
    print(f"exported {args.out} ({size_kb:.0f} KiB): H={metadata.horizon} A={metadata.action_dim} "
          f"{metadata.solver} N={metadata.solver_steps} obs_dim={metadata.obs_dim} objective={metadata.objective}"
          + (f" rtc d_max={metadata.rtc_max_delay}" if metadata.rtc else ""))
    print("parity (ONNX Runtime CPU vs PyTorch eager):")
    print(f"  {'w':>4} {'batch':>5} {'d':>3} {'max |diff|':>12}")
    for row in rows:
        d = "-" if row.prefix_length is None else str(row.prefix_length)
        print(f"  {row.guidance_scale:>4.1f} {row.batch:>5d} {d:>3} {row.max_abs_diff:>12.3e}")
    print(f"  worst {max(r.max_abs_diff for r in rows):.3e} <= tolerance {PARITY_TOLERANCE:g}: OK")
    if metadata.density is not None:
        d, cal = metadata.density, metadata.density.calibration
        print(f"density: {d.solver} x {d.steps}, parity (relative) {cal['parity_relative']:.2e}; threshold "
              f"{d.threshold:.3f} nat = the {cal['k']}-th smallest of {cal['n']} held-out episode minima "
              f"(alpha {cal['alpha']:g}); {cal['window_fraction_below']:.2%} of {cal['windows']} held-out windows below it")
    write_json(
        args.json,
        {
            "model": str(args.out),
            "parity": [row.__dict__ for row in rows],
            "max_abs_diff": max(r.max_abs_diff for r in rows),
            "tolerance": PARITY_TOLERANCE,
            "metadata": json.loads(metadata.to_json()),
        },
    )
    return 0
