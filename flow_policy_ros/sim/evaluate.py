"""``flow-policy eval-sim``: closed-loop evaluation of an ONNX policy in PyBullet.

    flow-policy eval-sim --model models/iiwa_reach_around.onnx --task reach_around --episodes 50 --seed 0 \\
        --json eval/reach_around.json

runs ``--episodes`` episodes through :mod:`flow_policy_ros.sim.closed_loop` (the node's
scheduler and safety clamp, synchronous inference), prints a summary, writes PNG plots into
``--out`` (default: ``<json stem>_plots/`` beside ``--json``, else ``out/eval_<task>/``, which git ignores) and, with ``--json``, the report
of :func:`summarize`.

Report fields: success rate with a 95 % Wilson interval; ``modes`` = successful episodes per
route (reach_around) and ``routes`` = all episodes per route incl. 'none'; ``failures`` per
reason; ``seam_smoothness`` = peak |acceleration| (rad/s²) and |jerk| (rad/s³) of the commanded
sequence (finite differences at the control period) in windows that straddle a chunk seam vs
windows inside one chunk, averaged over episodes, and their ratio (≈ 1: seams invisible);
``latency_ms`` p50/p99 of ``predict``; ``time_to_goal_s`` mean over successful episodes;
``invalid_outputs`` = model outputs that failed validation (wrong shape, NaN/inf) of
``inference_calls``, with the first reason; ``ood_holds`` = out-of-distribution holds and
``goals_rejected`` = episodes whose goal the guard refused, at ``ood_margin``; ``density`` (models
with an observation density, :func:`density_summary`) = density holds per episode, episodes held,
failing episodes held before their failure, successful episodes with a hold, and the score's range.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flow_policy_ros.metrics import (  # noqa: F401 - Z_95, seam_mask re-exported
    Z_95,
    episode_peaks,
    mean_overall_peaks,
    seam_mask,
    wilson_interval,
)
from flow_policy_ros.runtime.chunking import resolve_chunking
from flow_policy_ros.sim.closed_loop import (
    FAILURE_REASONS,
    EpisodeResult,
    LoopConfig,
    eval_episode_seeds,
    run_episodes,
)
from flow_policy_ros.sim.tasks import SIDES

if TYPE_CHECKING:
    from flow_policy_ros.runtime.policy import ChunkPolicy

#: Episodes whose command traces are plotted.
TRACE_EPISODES = 2


def seam_smoothness(results: Sequence[EpisodeResult], period_s: float) -> dict[str, Any]:
    """Per-episode peaks at seams vs inside chunks, averaged over episodes, and seam/inside ratios."""
    per_episode = [episode_peaks(r.commands, r.chunk_ticks, period_s) for r in results]
    out: dict[str, Any] = {}
    for name, unit in (("accel", "rad_s2"), ("jerk", "rad_s3")):
        for where in ("seam", "inside"):
            vals = [p[f"{name}_{where}"] for p in per_episode if p[f"{name}_{where}"] is not None]
            out[f"{name}_peak_{where}_{unit}"] = float(np.mean(vals)) if vals else None
        seam, inside = out[f"{name}_peak_seam_{unit}"], out[f"{name}_peak_inside_{unit}"]
        out[f"{name}_seam_to_inside_ratio"] = seam / inside if seam is not None and inside else None
    out["definition"] = (
        "per episode: max over joints and finite-difference windows of the clamped command sequence, windows "
        "straddling a chunk seam vs windows inside one chunk; then the mean over episodes"
    )
    return out


def _percentile_ms(samples: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(samples) * 1e3, q)) if len(samples) else None


def summarize(results: Sequence[EpisodeResult], task: str, seed: int, config: LoopConfig,
              model: dict[str, Any], period_s: float) -> dict[str, Any]:
    """The JSON report of an evaluation (see the module docstring for the fields)."""
    n = len(results)
    successes = sum(r.success for r in results)
    lo, hi = wilson_interval(successes, n)
    latencies = [s for r in results for s in r.latencies_s]
    reached = [r.reached_time_s for r in results if r.success and r.reached_time_s is not None]
    failures = Counter(r.failure for r in results if r.failure is not None)
    report: dict[str, Any] = {
        "task": task,
        "episodes": n,
        "seed": seed,
        "episode_seeds": [results[0].seed, results[-1].seed] if results else [],
        "guidance_scale": config.guidance_scale if config.guidance_scale is not None else model.get("default_guidance_scale"),
        "chunking": config.chunking,
        "replan_every": config.replan_every,
        "inject_delay_ms": config.inject_delay_ms,
        "success_rate": successes / n if n else 0.0,
        "successes": successes,
        "success_ci95": [lo, hi],
        "failures": {reason: failures.get(reason, 0) for reason in FAILURE_REASONS},
        "seam_smoothness": seam_smoothness(results, period_s),
        "latency_ms": {"p50": _percentile_ms(latencies, 50), "p99": _percentile_ms(latencies, 99), "calls": len(latencies)},
        "time_to_goal_s": {"mean": float(np.mean(reached)) if reached else None, "episodes": len(reached)},
        "limiter_clipped_fraction": sum(r.clipped_by_limiter for r in results) / max(1, sum(len(r.commands) for r in results)),
        "inference_calls": len(latencies),
        "invalid_outputs": sum(r.invalid_outputs for r in results),
        "first_invalid_output": next((r.first_invalid_output for r in results if r.first_invalid_output), ""),
        "ood_margin": config.ood_margin,
        "ood_holds": sum(r.ood_holds for r in results),
        "goals_rejected": sum(bool(r.goal_rejection) for r in results),
        "density": density_summary(results, config.density_hold_after),
        "controller": {key: sum(r.counters.get(key, 0) for r in results)
                       for key in sorted({k for r in results for k in r.counters})},
        "model": model,
        "per_episode": [_episode_json(r) for r in results],
    }
    if task == "reach_around":
        report["modes"] = {side: sum(r.success and r.route == side for r in results) for side in SIDES}
        report["routes"] = {
            route: {"episodes": sum(r.route == route for r in results), "successes": sum(r.success and r.route == route for r in results)}
            for route in (*SIDES, "none")
        }
    else:
        report["modes"] = {side: 0 for side in SIDES}
    return report


def _episode_json(r: EpisodeResult) -> dict[str, Any]:
    return {
        "seed": r.seed, "success": r.success, "failure": r.failure, "route": r.route,
        "reached_time_s": r.reached_time_s, "final_distance_m": r.final_distance_m, "goal_m": r.goal.tolist(),
        "invalid_outputs": r.invalid_outputs, "ood_holds": r.ood_holds, "goal_rejection": r.goal_rejection,
        "density_holds": r.density_holds, "first_density_hold_tick": r.first_density_hold_tick,
        "density_min_score": min(r.density_scores) if r.density_scores else None,
    }


def density_summary(results: Sequence[EpisodeResult], hold_after: int) -> dict[str, Any] | None:
    """Density holds of an evaluation (None when the model has no density): per episode, how many
    episodes had one, how many failing episodes were held before their failure (an episode ends at
    its collision or time limit, so any hold in it came first), how many successes saw one."""
    if not any(r.density_scores for r in results):
        return None
    held = [r for r in results if r.density_holds]
    failing = [r for r in results if not r.success]
    scores = np.array([s for r in results for s in r.density_scores])
    return {
        "hold_after": hold_after,
        "holds": sum(r.density_holds for r in results),
        "episodes_held": len(held),
        "episodes_held_fraction": len(held) / max(1, len(results)),
        "failing_episodes": len(failing),
        "failing_held_before_failure": sum(bool(r.density_holds) for r in failing),
        "successful_episodes_held": sum(r.success for r in held),
        "score_p1_p50": [float(np.percentile(scores, 1)), float(np.median(scores))],
        "score_min": float(scores.min()),
    }


def model_info(policy: ChunkPolicy) -> dict[str, Any]:
    """Name, file hash and provenance of a loaded ONNX policy for the report."""
    meta = policy.metadata
    return {
        "name": meta.name, "hash": meta.model_hash, "path": str(policy.path), "objective": meta.objective,
        "horizon": meta.horizon, "solver_steps": meta.solver_steps, "solver": meta.solver,
        "default_guidance_scale": meta.guidance_scale, "rtc_max_delay": meta.rtc_max_delay,
        "chunk_basis": meta.chunk_basis, "noise_scale": meta.noise_scale, "provider": policy.active_provider,
    }


def peak_smoothness(smoothness: dict[str, Any]) -> dict[str, float | None]:
    """Peak |acceleration| and |jerk| of a report: the larger of the seam and inside means."""
    out: dict[str, float | None] = {}
    for name, unit in (("accel", "rad_s2"), ("jerk", "rad_s3")):
        values = [v for v in (smoothness[f"{name}_peak_seam_{unit}"], smoothness[f"{name}_peak_inside_{unit}"]) if v is not None]
        out[f"{name}_peak_{unit}"] = max(values) if values else None
    return out


def reference_ratios(report: dict[str, Any], reference: dict[str, Any]) -> dict[str, float | None]:
    """Policy / reference ratios of peak acceleration and jerk (seam, inside, and the larger of both)."""
    ours, ref = report["seam_smoothness"], reference["seam_smoothness"]
    ratios: dict[str, float | None] = {}
    for name, unit in (("accel", "rad_s2"), ("jerk", "rad_s3")):
        for where in ("seam", "inside"):
            a, b = ours[f"{name}_peak_{where}_{unit}"], ref[f"{name}_peak_{where}_{unit}"]
            ratios[f"{name}_{where}"] = a / b if a is not None and b else None
    peaks, ref_peaks = peak_smoothness(ours), peak_smoothness(ref)
    for name, unit in (("accel", "rad_s2"), ("jerk", "rad_s3")):
        a, b = peaks[f"{name}_peak_{unit}"], ref_peaks[f"{name}_peak_{unit}"]
        ratios[f"{name}_peak"] = a / b if a is not None and b else None
    return ratios


def evaluate_reference(policy: ChunkPolicy, task: str, episodes: int, seed: int, config: LoopConfig,
                       progress: bool = True) -> dict[str, Any]:
    """The scripted expert on the same episodes through the same controller (see ``sim.reference``)."""
    from flow_policy_ros.sim.reference import ExpertPolicy

    expert = ExpertPolicy(policy.metadata)
    chunking = resolve_chunking(config.chunking, policy.metadata.rtc)
    plain = replace(config, chunking="receding_horizon" if chunking == "rtc" else chunking, inject_delay_ms=0.0)
    try:
        report, _ = evaluate(expert, task, episodes, seed, plain, progress=progress, label=f"reference expert {task}")
    finally:
        expert.close()
    report.pop("per_episode")
    report["model"] = {"name": "scripted expert", "objective": "expert"}
    report["peaks"] = peak_smoothness(report["seam_smoothness"])
    return report


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_summary(report: dict[str, Any]) -> str:
    """Human-readable multi-line summary of a report."""
    lo, hi = report["success_ci95"]
    seams = report["seam_smoothness"]
    ratio = seams["jerk_seam_to_inside_ratio"]
    ttg = report["time_to_goal_s"]["mean"]
    lines = [
        f"{report['model']['name']} on {report['task']}, w={report['guidance_scale']}, {report['chunking']} "
        f"(replan every {report['replan_every']}): success {report['successes']}/{report['episodes']} = "
        f"{report['success_rate']:.1%} (95% CI {lo:.1%}-{hi:.1%})",
        f"  failures: {report['failures']}",
        f"  guards: {report['invalid_outputs']}/{report['inference_calls']} invalid model outputs, "
        f"{report['ood_holds']} out-of-distribution holds, {report['goals_rejected']} goals rejected "
        f"(ood_margin {report['ood_margin']:g})",
        f"  jerk peak at seams / inside chunks: {ratio if ratio is None else round(ratio, 2)}; "
        f"latency p50 {report['latency_ms']['p50']:.2f} ms, p99 {report['latency_ms']['p99']:.2f} ms; "
        f"time to goal {'-' if ttg is None else f'{ttg:.2f} s'}",
    ]
    if report["task"] == "reach_around":
        lines.insert(2, f"  successful routes: {report['modes']}; all episodes by route: {report['routes']}")
    peaks = report.get("peaks")
    if peaks:
        lines.append(f"  peak |acceleration| {peaks['accel_peak_rad_s2']:.1f} rad/s^2, peak |jerk| {peaks['jerk_peak_rad_s3']:.0f} rad/s^3"
                     " (max of seam and inside, mean over episodes)")
    reference = report.get("reference")
    if reference:
        r, ref = report["reference_ratios"], reference
        lines.append(
            f"  vs scripted expert on the same episodes (expert success {ref['successes']}/{ref['episodes']}, peak accel "
            f"{ref['peaks']['accel_peak_rad_s2']:.1f}, jerk {ref['peaks']['jerk_peak_rad_s3']:.0f}): policy/expert accel "
            f"{_ratio(r['accel_peak'])} (seam {_ratio(r['accel_seam'])}, inside {_ratio(r['accel_inside'])}), jerk "
            f"{_ratio(r['jerk_peak'])} (seam {_ratio(r['jerk_seam'])}, inside {_ratio(r['jerk_inside'])})")
    density = report.get("density")
    if density:
        lines.append(f"  observation density: {density['holds']} holds (k = {density['hold_after']}) in "
                     f"{density['episodes_held']} episodes; failing episodes held before the failure "
                     f"{density['failing_held_before_failure']}/{density['failing_episodes']}; successful episodes "
                     f"with a hold {density['successful_episodes_held']}")
    return "\n".join(lines)


def evaluate(policy: ChunkPolicy, task: str, episodes: int, seed: int, config: LoopConfig,
             progress: bool = True, label: str = "") -> tuple[dict[str, Any], list[EpisodeResult]]:
    """Run the evaluation with a tqdm bar (running success rate); returns (report, episode results)."""
    from tqdm import tqdm

    seeds = eval_episode_seeds(seed, episodes)
    config = replace(config, chunking=resolve_chunking(config.chunking, policy.metadata.rtc))  # 'auto' -> the mode run
    with tqdm(total=len(seeds), desc=label or f"eval-sim {task}", unit="ep", disable=not progress) as bar:
        done = {"n": 0, "ok": 0}

        def on_episode(result: EpisodeResult) -> None:
            done["n"] += 1
            done["ok"] += int(result.success)
            bar.set_postfix(success=f"{done['ok']}/{done['n']} ({done['ok'] / done['n']:.0%})", refresh=False)
            bar.update(1)

        results = run_episodes(policy, task, seeds, config, on_episode=on_episode)
    info = model_info(policy) if hasattr(policy, "session") else {"name": type(policy).__name__}
    report = summarize(results, task, seed, config, info, policy.metadata.control_period_s)
    report["peaks"] = peak_smoothness(report["seam_smoothness"])
    report["peaks_all_windows"] = mean_overall_peaks([r.commands for r in results], policy.metadata.control_period_s)
    return report, results


def default_plot_dir(json_path: Path | None, task: str) -> Path:
    """``<json dir>/<json stem>_plots`` beside the report, else ``out/eval_<task>`` (``out/`` is git-ignored:
    never the repository root)."""
    if json_path is not None:
        return json_path.parent / f"{json_path.stem}_plots"
    return Path("out") / f"eval_{task}"
