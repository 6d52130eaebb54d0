"""``flow-policy eval-sim``: the command-line verb (arguments, progress, report) over :mod:`flow_policy_ros.sim.evaluate`."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from flow_policy_ros.cli import CliError, write_json
from flow_policy_ros.errors import InvalidOutputError
from flow_policy_ros.runtime.chunking import resolve_chunking
from flow_policy_ros.runtime.settings import add_setting_flags, in_process_settings, settings_from_args
from flow_policy_ros.sim.closed_loop import eval_episode_seeds, validate_config
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
    add_setting_flags(parser, in_process_settings())  # policy_node's parameters of the same names
    parser.add_argument("--reference", choices=REFERENCES, help="also run this reference on the same episodes through the "
                        "same controller and report policy/reference smoothness ratios (JSON key 'reference')")
    parser.add_argument("--out", type=Path, help="plot directory (default: <json stem>_plots/ beside --json, else out/eval_<task>/)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_args(args: argparse.Namespace) -> None:
    if not args.model.is_file():
        raise CliError(f"--model {args.model}: file not found")
    try:
        eval_episode_seeds(args.seed, args.episodes)
        settings_from_args(args, in_process_settings())
    except ValueError as exc:  # a setting outside the table's range
        raise CliError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    from flow_policy_ros.runtime.policy import load_policy

    policy = load_policy(args.model, seed=args.seed)
    config = settings_from_args(args, in_process_settings())
    config = replace(config, chunking=resolve_chunking(config.chunking, policy.metadata.rtc))
    try:
        validate_config(config, policy.metadata)
    except ValueError as exc:  # --replan-every / --guidance-scale out of range for this model
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
    if "plots" in report:
        print(f"eval-sim: {len(report['plots'])} plots in {out}")
    write_json(args.json, report)
    calls, invalid = report["inference_calls"], report["invalid_outputs"]
    if calls and invalid == calls:
        raise InvalidOutputError(f"--model {args.model}: all {calls} model outputs were invalid "
                                 f"(first: {report['first_invalid_output']})")
    return 0
