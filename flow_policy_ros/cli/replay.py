"""``flow-policy replay``: the command-line verb (arguments, progress, report) over :mod:`flow_policy_ros.data.replay`.

A progress bar (after the first second) counts the bags (decisions so far, the running
wall-clock rate). The throughput
printed and reported (``overall.decisions_per_s``) is on the wall clock, from the first bag read
to the last bag scored; ``overall.inference_decisions_per_s`` is the batched model calls alone,
which leave out reading, decision building, the single-call latency sample and the safety review
(on 300 episode bags: 12002/s for the model calls against 247/s on the wall clock).
``--plots summary`` (default) draws one summary plot over all bags (``summary.png``); ``all``
adds two plots per bag, ``none`` draws nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flow_policy_ros.cli import CliError, expand_bags, write_json
from flow_policy_ros.data import bag as bagio
from flow_policy_ros.data.replay import DEFAULT_POLICY_TOPIC, WRITTEN_CONTENT, BagReplay, replay_bag, write_replay_bag
from flow_policy_ros.data.replay_decisions import DEFAULT_BATCH
from flow_policy_ros.data.replay_metrics import error_metrics
from flow_policy_ros.data.replay_safety import safety_warning
from flow_policy_ros.data.replay_source import DEFAULT_TRAJECTORY_TOPIC, load_joint_map
from flow_policy_ros.errors import BagError, InvalidOutputError
from flow_policy_ros.policy.config import ConfigError, ExperimentConfig
from flow_policy_ros.runtime.chunking import DEFAULT_REPLAN_EVERY
from flow_policy_ros.runtime.metadata import PolicyMetadata
from flow_policy_ros.runtime.ood import DEFAULT_OOD_MARGIN, validate_margin


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", nargs="+", type=Path, metavar="BAG",
                        help="rosbag2 directories (mcap or sqlite3), or directories of them (e.g. a `collect --out` or "
                             "`demo --record` directory: every bag found under it, sorted)")
    parser.add_argument("--model", type=Path, required=True, help="exported .onnx policy")
    parser.add_argument("--out", type=Path, required=True, help="output directory (report.json, plots, bags)")
    parser.add_argument("--config", type=Path, help="experiment YAML; its `data` section names topics and command joints")
    parser.add_argument("--joint-map", type=Path, help="YAML mapping driver joint name -> model joint name")
    parser.add_argument("--goal", type=float, nargs=3, metavar=("X", "Y", "Z"), help="goal (m) for bags without a goal topic")
    parser.add_argument("--guidance", type=float, help="CFG weight w (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (decision j uses the j-th draw)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="decisions per ONNX Runtime call")
    parser.add_argument("--replan-every", type=int, default=DEFAULT_REPLAN_EVERY, help="ticks per chunk for the seam-jerk metric")
    parser.add_argument("--rtc-prefix", type=int, metavar="D",
                        help="real-time chunking models: committed prefix length for the prefix-consistency metric "
                             "(recorded actions as the prefix; default the model's d_max)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--providers", nargs="+", help="ONNX Runtime execution providers in preference order "
                        "(default: CUDA if it works, else CPU)")
    parser.add_argument("--trajectory-topic", default=DEFAULT_TRAJECTORY_TOPIC,
                        help="JointTrajectory chunks used as commands when the bag has no command topic (data.action_source "
                             "'commands'; action_source 'joint_trajectory' reads data.trajectory_topic)")
    parser.add_argument("--ood-margin", type=float, default=DEFAULT_OOD_MARGIN,
                        help="out-of-distribution margin in training-range widths (policy_node's ood_margin)")
    parser.add_argument("--write-bag", action="store_true",
                        help="also write <out>/<bag>.replay with what policy_node would have published (clamped chunks, holds)")
    parser.add_argument("--policy-topic", default=DEFAULT_POLICY_TOPIC, help="topic of the predicted chunks in --write-bag")
    parser.add_argument("--plots", choices=PLOT_CHOICES, default="summary",
                        help="summary (default): one plot over all bags, OUT/summary.png; all: also two per bag "
                             "(OUT/<bag>.joints.png, OUT/<bag>.horizon.png); none")
    parser.add_argument("--no-plots", action="store_const", const="none", dest="plots", help="same as --plots none")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--fail-on", type=parse_fail_on, default={}, metavar="ood=F,limits=N,velocity=N,density=F",
                        help="exit 1 with one line when a limit is exceeded over all bags: ood = fraction of decisions out of "
                             "distribution, limits = commands outside the joint limits, velocity = steps beyond the velocity "
                             "limit, density = fraction of decisions below the density threshold (models with a density)")
    parser.add_argument("--json", type=Path, help="also write the report here")


#: What --plots may draw.
PLOT_CHOICES = ("summary", "all", "none")


FAIL_ON_KEYS = {"ood": float, "limits": int, "velocity": int, "density": float}


def parse_fail_on(text: str) -> dict[str, float]:
    """'ood=0.05,limits=0,density=0.01' -> {'ood': 0.05, 'limits': 0, 'density': 0.01} (argparse type)."""
    limits: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in FAIL_ON_KEYS:
            raise argparse.ArgumentTypeError(f"{item!r}: expected KEY=VALUE with KEY one of {sorted(FAIL_ON_KEYS)}")
        try:
            number = FAIL_ON_KEYS[key](value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{item!r}: {value!r} is not a {FAIL_ON_KEYS[key].__name__}") from exc
        if number < 0:
            raise argparse.ArgumentTypeError(f"{item!r}: must be >= 0")
        limits[key] = number
    return limits


def fail_on_violations(limits: dict[str, float], overall: dict[str, Any]) -> list[str]:
    """The exceeded ``--fail-on`` limits of a report's overall section, one phrase each."""
    safety, density = overall["safety"], overall.get("density")
    measured: dict[str, tuple[float | None, str]] = {
        "ood": (safety["ood_fraction"], "of decisions out of distribution"),
        "limits": (safety["outside_limits_commands"], "commands outside the joint limits"),
        "velocity": (safety["velocity_violation_steps"], "steps beyond the velocity limit"),
        "density": (None if density is None else density["flagged_fraction"], "of decisions below the density threshold"),
    }
    out = []
    for key, limit in limits.items():
        value, what = measured[key]
        if value is None:
            out.append(f"{key}: not measured ({'no density in the model' if key == 'density' else 'guard off'})")
        elif value > limit:
            shown = f"{value:.2%}" if FAIL_ON_KEYS[key] is float else f"{int(value)}"
            out.append(f"{key}: {shown} {what} > {limit:g}")
    return out


#: What replay scored against when a bag had no recorded commands (report ``action_fallback.used_source``).
FALLBACK_TARGETS = {"joint_states": "the executed joint positions", "trajectory": "the recorded trajectory chunks"}


def fallback_line(bag_reports: Sequence[dict[str, Any]]) -> str:
    """One console line naming the bags whose action source fell back from the recorded commands
    (the topic wanted, the topic used), or '' when every bag had what was asked."""
    fell = [r for r in bag_reports if r.get("action_fallback")]
    if not fell:
        return ""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for r in fell:
        fb = r["action_fallback"]
        groups.setdefault((fb["wanted_topic"], fb["used_source"], fb["used_topic"]), []).append(Path(r["bag"]).name)
    parts = []
    for (wanted, used, topic), names in groups.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        parts.append(f"no {wanted} in {shown}: scored against {FALLBACK_TARGETS[used]} on {topic} instead of the "
                     "recorded commands")
    return f"action source fell back in {len(fell)} of {len(bag_reports)} bag(s): " + "; ".join(parts)


def _output_names(bags: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for bag_path in bags:
        name = bag_path.resolve().name or "bag"
        names.append(name if name not in names else f"{name}_{len(names)}")
    return names


def _check_args(args: argparse.Namespace) -> None:
    args.bags = expand_bags(args.bags)
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.replan_every < 1:
        raise CliError(f"--replan-every must be >= 1, got {args.replan_every}")
    try:
        validate_margin(args.ood_margin)
    except ValueError as exc:
        raise CliError(f"--ood-margin: {exc}") from exc
    out = args.out.resolve()
    for bag_path in args.bags:
        resolved = bag_path.resolve()
        if out == resolved or resolved in out.parents:
            raise CliError(f"--out {args.out} lies inside the input bag {bag_path}; choose another directory")
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out} exists and is not a directory")
    if args.write_bag:
        for name in _output_names(args.bags):
            if (args.out / f"{name}.replay").exists():
                raise CliError(f"{args.out / (name + '.replay')} already exists; refusing to overwrite")


def run(args: argparse.Namespace) -> int:
    from flow_policy_ros.runtime.policy import load_policy

    _check_args(args)
    data_cfg = bagio.DEFAULT_DATA_CONFIG
    if args.config is not None:
        try:
            data_cfg = ExperimentConfig.from_yaml(args.config).data
        except ConfigError as exc:
            raise CliError(f"--config: {exc}") from exc
    joint_map = load_joint_map(args.joint_map) if args.joint_map else None
    for bag_path in args.bags:  # cheap checks (missing, not a bag, corrupt index, empty) before loading the model
        if sum(t.count for t in bagio.list_topics(bag_path).values()) == 0:
            raise BagError(f"{bag_path}: empty bag (no messages)")
    policy = load_policy(args.model, providers=args.providers, intra_op_num_threads=args.threads, seed=args.seed)
    meta = policy.metadata
    if args.rtc_prefix is not None and not meta.rtc:
        raise CliError(f"--rtc-prefix: {args.model} is not a real-time chunking model (no rtc in its metadata)")
    if args.rtc_prefix is not None and not 1 <= args.rtc_prefix <= meta.rtc_max_delay:
        raise CliError(f"--rtc-prefix {args.rtc_prefix}: must be in [1, d_max={meta.rtc_max_delay}]")
    from tqdm import tqdm

    replays = []
    start = time.perf_counter()
    # delay: the bar shows on long work only, so a bag refused at once leaves just its one-line error
    with tqdm(args.bags, desc="replay", unit="bag", disable=args.no_progress, dynamic_ncols=True, delay=1.0) as bar:
        for bag_path in bar:  # read and score every bag before writing anything
            replays.append(replay_bag(bag_path, policy, data_cfg, joint_map, args.goal, args.seed, args.guidance,
                                      args.batch_size, args.replan_every, args.trajectory_topic,
                                      ood_margin=args.ood_margin, rtc_prefix=args.rtc_prefix))
            done = sum(r.report["decisions"] for r in replays)
            bar.set_postfix_str(f"{done} decisions, {done / (time.perf_counter() - start):.0f}/s")
    wall_s = time.perf_counter() - start
    decisions = sum(r.report["decisions"] for r in replays)
    invalid = sum(r.report["invalid_outputs"] for r in replays)
    if invalid == decisions:
        first = next(r.report["first_invalid_output"] for r in replays if r.report["first_invalid_output"])
        raise InvalidOutputError(f"--model {args.model}: all {decisions} model outputs on {len(replays)} bag(s) "
                                 f"were invalid (first: {first})")
    if meta.observation_range is None:
        print("replay: warning: out-of-distribution guard off: no training range in metadata", file=sys.stderr)
    fallback = fallback_line([rep.report for rep in replays])
    if fallback:
        print(f"replay: warning: {fallback}", file=sys.stderr)
    for rep in replays:
        warning = safety_warning(rep.report)
        if warning:
            print(f"replay: warning: {warning}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rep in zip(_output_names(args.bags), replays):
        if args.plots == "all":
            from flow_policy_ros.data.replay_plots import plot_horizon_error, plot_joints

            rep.report["plots"] = [str(plot_joints(args.out / f"{name}.joints.png", rep, meta)),
                                   str(plot_horizon_error(args.out / f"{name}.horizon.png", rep))]
        if args.plots != "none" and rep.decisions.images:  # a camera model: the frame beside the chunk, a few decisions
            from flow_policy_ros.data.replay_plots import plot_cameras

            rep.report.setdefault("plots", []).append(str(plot_cameras(args.out / f"{name}.cameras.png", rep, meta)))
        if args.plots != "none" and rep.report.get("density") is not None:  # the score over time, the threshold
            from flow_policy_ros.data.replay_plots import plot_density

            rep.report.setdefault("plots", []).append(str(plot_density(args.out / f"{name}.density.png", rep)))
        if args.write_bag:
            out_bag = args.out / f"{name}.replay"
            chunks = write_replay_bag(out_bag, rep, meta, args.policy_topic)
            rep.report["output_bag"] = {"path": str(out_bag), "topic": args.policy_topic, "trajectories": chunks,
                                        "held": rep.report["safety"]["held_decisions"], "content": WRITTEN_CONTENT}
    report = _report(args, policy, replays, wall_s)
    if args.plots != "none":
        from flow_policy_ros.data.replay_plots import plot_summary

        report["summary_plot"] = str(plot_summary(args.out / "summary.png", report))
    write_json(args.out / "report.json", report)
    write_json(args.json, report)
    summary = report["overall"]
    safety = summary["safety"]
    ood = "guard off" if safety["ood_fraction"] is None else f"{safety['ood_fraction']:.1%} out of distribution"
    print(f"replay: {summary['decisions']} decisions in {len(replays)} bag(s); first-action MAE "
          f"{summary['first_action_mae_rad']:.4g} rad, MAE {summary['mae_rad']:.4g} rad "
          f"({summary['invalid_outputs']} invalid outputs not scored); {ood}, "
          f"{safety['outside_limits_fraction']:.1%} of commands outside the limits, "
          f"{safety['velocity_violation_fraction']:.1%} of steps beyond the velocity limit; "
          f"{summary['decisions_per_s']:.0f} decisions/s on the wall clock ({summary['wall_time_s']:.1f} s; "
          f"model calls alone {summary['inference_decisions_per_s']:.0f}/s); report {args.out / 'report.json'}")
    if args.plots != "none":
        count = sum(len(rep.report.get("plots", [])) for rep in replays)  # joints, horizon, cameras, density
        per_bag = f" and {count} per-bag plots" if count else ""
        print(f"replay: plots: {report['summary_plot']}{per_bag}")
    if summary.get("density") is not None:
        d = summary["density"]
        print(f"replay: observation density: {d['flagged_fraction']:.1%} of decisions below the threshold "
              f"{d['threshold']:.2f} nat, {d['held_fraction']:.1%} held (k = {d['hold_after']}), min score {d['min']:.2f}")
    violations = fail_on_violations(args.fail_on, summary)
    if violations:
        print(f"flow-policy replay: --fail-on exceeded: {'; '.join(violations)}", file=sys.stderr)
        return 1
    rtc = summary.get("rtc_prefix")
    if rtc and rtc["seam_step_mean_abs_rad"] is not None:
        print(f"replay: rtc prefix d={rtc['prefix_length']} on {rtc['decisions']} decisions: prefix "
              f"{'reproduced exactly' if rtc['reproduced'] else 'NOT reproduced'}; step from the last committed action "
              f"to the first new one {rtc['seam_step_mean_abs_rad']:.4g} rad mean (recorded {rtc['recorded_step_mean_abs_rad']:.4g}), "
              f"max {rtc['seam_step_max_abs_rad']:.4g} rad, {rtc['beyond_velocity_limit_fraction']:.1%} beyond the velocity limit")
    return 0


def _report(args: argparse.Namespace, policy: Any, replays: Sequence[BagReplay], wall_s: float) -> dict[str, Any]:
    meta: PolicyMetadata = policy.metadata
    ok = np.concatenate([~r.invalid for r in replays])
    pred = np.concatenate([r.predicted for r in replays])[ok]
    targets = np.concatenate([r.decisions.targets for r in replays])[ok]
    valid = np.concatenate([r.decisions.valid for r in replays])[ok]
    overall = error_metrics(pred, targets, valid, meta.action_joint_names, meta.control_period_s)
    infer_s = sum(r.report["timing_s"]["inference"] for r in replays)
    decisions = sum(r.report["decisions"] for r in replays)
    scored = len(pred) * meta.horizon  # the valid decisions' predicted commands

    def fraction(key: str, count_key: str, per: str) -> float | None:
        if any(r.report["safety"][key] is None for r in replays):
            return None
        total = decisions if per == "decisions" else scored
        return sum(r.report["safety"][count_key] for r in replays) / max(1, total)
    return {
        "model": {"path": str(args.model), "name": meta.name, "sha256": meta.model_hash, "provider": policy.active_provider,
                  "horizon": meta.horizon, "action_joint_names": list(meta.action_joint_names),
                  "control_period_s": meta.control_period_s},
        "seed": args.seed,
        "guidance_scale": meta.guidance_scale if args.guidance is None else args.guidance,
        "bags": [r.report for r in replays],
        "ood_margin": args.ood_margin,
        "overall": {"decisions": decisions, "invalid_outputs": decisions - len(pred),
                    "action_fallback_bags": sum(r.report["action_fallback"] is not None for r in replays),
                    "first_action_mae_rad": overall["first_action"]["mae_rad"],
                    "mae_rad": overall["overall"]["mae_rad"], "rmse_rad": overall["overall"]["rmse_rad"],
                    "horizon_mae_rad": overall["horizon"]["mae_rad"],
                    "wall_time_s": wall_s, "decisions_per_s": decisions / wall_s if wall_s > 0 else None,
                    "inference_decisions_per_s": decisions / infer_s if infer_s > 0 else None,
                    "safety": {"ood_fraction": fraction("ood_fraction", "ood_decisions", "decisions"),
                               "outside_limits_fraction": fraction("outside_limits_fraction", "outside_limits_commands",
                                                                   "commands"),
                               "velocity_violation_fraction": fraction("velocity_violation_fraction",
                                                                       "velocity_violation_steps", "commands"),
                               "held_decisions": sum(r.report["safety"]["held_decisions"] for r in replays),
                               "outside_limits_commands": sum(r.report["safety"]["outside_limits_commands"] for r in replays),
                               "velocity_violation_steps": sum(r.report["safety"]["velocity_violation_steps"] for r in replays)},
                    "density": _overall_density([r.report.get("density") for r in replays]),
                    "rtc_prefix": _overall_prefix([r.report["rtc_prefix"] for r in replays])},
    }


def _overall_density(per_bag: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Flagged and held fractions over all bags (None for a model without a density)."""
    if not per_bag or per_bag[0] is None:
        return None
    decisions = sum(d["decisions"] for d in per_bag)
    mins = [d["min"] for d in per_bag if d["min"] is not None]
    return {"threshold": per_bag[0]["threshold"], "hold_after": per_bag[0]["hold_after"], "decisions": decisions,
            "flagged_fraction": sum(d["flagged"] for d in per_bag) / max(1, decisions),
            "held_fraction": sum(d["held_decisions"] for d in per_bag) / max(1, decisions),
            "min": min(mins) if mins else None}


def _overall_prefix(per_bag: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Prefix consistency over all bags (decision-weighted means; None for a plain model)."""
    scored = [r for r in per_bag if r is not None and r["seam_step_mean_abs_rad"] is not None]
    if not per_bag or per_bag[0] is None:
        return None
    result: dict[str, Any] = {"prefix_length": per_bag[0]["prefix_length"],
                              "decisions": sum(r["decisions"] for r in per_bag if r is not None),
                              "reproduced": None, "seam_step_mean_abs_rad": None, "seam_step_max_abs_rad": None,
                              "recorded_step_mean_abs_rad": None, "seam_step_error_mean_abs_rad": None,
                              "beyond_velocity_limit_fraction": None}
    if not scored:
        return result
    weights = np.array([r["decisions"] - r["invalid_outputs"] for r in scored], float)

    def mean(key: str) -> float:
        return float(np.average([r[key] for r in scored], weights=weights))
    result.update({"reproduced": all(r["reproduced"] for r in scored),
                   "seam_step_max_abs_rad": max(r["seam_step_max_abs_rad"] for r in scored),
                   **{k: mean(k) for k in ("seam_step_mean_abs_rad", "recorded_step_mean_abs_rad",
                                           "seam_step_error_mean_abs_rad", "beyond_velocity_limit_fraction")}})
    return result
