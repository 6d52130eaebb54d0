"""``flow-policy eval-sim``: the command-line verb (arguments, progress, report) over :mod:`flow_policy_ros.sim.evaluate`."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from flow_policy_ros.cli import CliError, write_json
from flow_policy_ros.errors import InvalidOutputError
from flow_policy_ros.runtime.chunking import CHUNKING_CHOICES, DEFAULT_REPLAN_EVERY, resolve_chunking
from flow_policy_ros.runtime.ood import DEFAULT_OOD_MARGIN
from flow_policy_ros.sim.closed_loop import (
    LoopConfig,
    eval_episode_seeds,
    validate_config,
)
from flow_policy_ros.sim.evaluate import (
    default_plot_dir,
    evaluate,
    evaluate_reference,
    format_summary,
    reference_ratios,
)
from flow_policy_ros.sim.reference import REFERENCES
from flow_policy_ros.sim.tasks import TASKS


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="exported .onnx policy")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--episodes", type=int, default=50, help="episodes to run (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed in [0, 99]; episode seeds derive from it")
    parser.add_argument("--guidance", type=float, default=None, help="CFG weight w (default: the model's)")
    parser.add_argument("--chunking", choices=CHUNKING_CHOICES, default="auto",
                        help="default auto: rtc for a real-time chunking model (metadata rtc), else receding_horizon")
    parser.add_argument("--replan-every", type=int, default=DEFAULT_REPLAN_EVERY, help="actions executed per chunk before the next (1..H)")
    parser.add_argument("--ood-margin", type=float, default=DEFAULT_OOD_MARGIN,
                        help="out-of-distribution guard margin in training-range widths (as policy_node's ood_margin)")
    parser.add_argument("--reference", choices=REFERENCES, help="also run this reference on the same episodes through the "
                        "same controller and report policy/reference smoothness ratios (JSON key 'reference')")
    parser.add_argument("--inject-delay-ms", type=float, default=0.0,
                        help="experiments: each chunk becomes available MS later in sim time (inference delay)")
    parser.add_argument("--out", type=Path, help="plot directory (default: <json stem>_plots/ beside --json, else ./eval_<task>)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_args(args: argparse.Namespace) -> None:
    if not args.model.is_file():
        raise CliError(f"--model {args.model}: file not found")
    try:
        eval_episode_seeds(args.seed, args.episodes)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if args.guidance is not None and not math.isfinite(args.guidance):
        raise CliError(f"--guidance must be finite, got {args.guidance}")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    from flow_policy_ros.runtime.onnx_policy import OnnxPolicy

    policy = OnnxPolicy(args.model, seed=args.seed)
    chunking = resolve_chunking(args.chunking, policy.metadata.rtc)
    config = LoopConfig(chunking=chunking, replan_every=args.replan_every, guidance_scale=args.guidance,
                        ood_margin=args.ood_margin, inject_delay_ms=args.inject_delay_ms)
    try:
        validate_config(config, policy.metadata)
    except ValueError as exc:  # --replan-every / --guidance out of range for this model
        raise CliError(str(exc)) from exc
    report, results = evaluate(policy, args.task, args.episodes, args.seed, config, progress=not args.no_progress)
    if args.reference:
        report["reference"] = evaluate_reference(policy, args.task, args.episodes, args.seed, config,
                                                 progress=not args.no_progress)
        report["reference_ratios"] = reference_ratios(report, report["reference"])
    if not args.no_plots:
        from flow_policy_ros.sim.eval_plots import write_plots

        out = args.out or default_plot_dir(args.json, args.task)
        report["plots"] = [str(p) for p in write_plots(out, results, policy.metadata, args.task)]
    print(format_summary(report))
    write_json(args.json, report)
    calls, invalid = report["inference_calls"], report["invalid_outputs"]
    if calls and invalid == calls:
        raise InvalidOutputError(f"--model {args.model}: all {calls} model outputs were invalid "
                                 f"(first: {report['first_invalid_output']})")
    return 0
