"""PNG plots of a replay (matplotlib, Agg canvas: no display, no global backend switch).

Each plot is written to a temp file beside the target and renamed, so a reader never sees a
half-written PNG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from flow_policy_ros.runtime.metadata import PolicyMetadata

if TYPE_CHECKING:
    from flow_policy_ros.data.replay import BagReplay

#: Chunks drawn whole in the per-joint plot (evenly spaced), to show what a chunk looks like.
CHUNKS_DRAWN = 12
#: Decisions shown with their camera frames in :func:`plot_cameras` (evenly spaced).
CAMERA_DECISIONS = 4


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    FigureCanvasAgg(fig)
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    return path


#: Colour of each kind of held decision in :func:`plot_joints` (shaded spans; legend label -> colour).
HOLD_COLOURS = {"held: out of distribution": "tab:purple",
                "held: invalid output or measured beyond the limits": "tab:red",
                "held: observation density": "tab:brown"}
#: A joint limit further than this many data spans beyond the plotted data is drawn off scale (its
#: line outside the view, its value with an arrow right of the axis) so the trajectories stay readable.
LIMIT_VIEW_SPANS = 0.5


def hold_masks(rep: BagReplay, meta: PolicyMetadata) -> dict[str, np.ndarray]:
    """Legend label -> (N,) bool: the decisions policy_node would hold, by reason (disjoint).

    Out of distribution (observation range guard), else invalid output or measured position
    beyond the limits (the rest of the safety review's holds), else the density guard's hold.
    """
    from flow_policy_ros.data.replay_safety import density_held

    n = len(rep.decisions.ticks_ns)
    held = rep.safety.held if rep.safety is not None else np.zeros(n, bool)
    ood = rep.safety.ood if rep.safety is not None and rep.safety.ood is not None else np.zeros(n, bool)
    density = density_held(rep.scores, meta)
    labels = list(HOLD_COLOURS)
    return {labels[0]: ood & held, labels[1]: held & ~ood,
            labels[2]: np.zeros(n, bool) if density is None else density & ~held}


def mask_spans(times_s: np.ndarray, mask: np.ndarray, period_s: float) -> list[tuple[float, float]]:
    """(start, end) s of each run of consecutive True decisions, each decision covering
    ± period/2 around its time; a gap of more than 1.5 periods between decisions ends a run."""
    spans: list[tuple[float, float]] = []
    start = prev = None
    for t, on in zip(times_s, mask):
        if on and start is not None and t - prev > 1.5 * period_s:
            spans.append((start - period_s / 2, prev + period_s / 2))
            start = None
        if on:
            start = t if start is None else start
            prev = t
        elif start is not None:
            spans.append((start - period_s / 2, prev + period_s / 2))
            start = None
    if start is not None:
        spans.append((start - period_s / 2, prev + period_s / 2))
    return spans


def _limit_view(ax: Any, data: np.ndarray, lower: float, upper: float, legend: bool) -> None:
    """Draw the joint's limits (dashed red) and set the y view: the data, plus each limit that lies
    within LIMIT_VIEW_SPANS data spans of it; a limit further away gets its value (rad) with an
    arrow right of the axis.
    ``legend``: label the lines 'joint limit' (one axis does)."""
    finite = data[np.isfinite(data)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (lower, upper)
    span = max(hi - lo, 0.05)
    near = span * LIMIT_VIEW_SPANS
    view_lo = min(lo, lower) if lower >= lo - near else lo
    view_hi = max(hi, upper) if upper <= hi + near else hi
    pad = 0.08 * (view_hi - view_lo or span)
    ax.set_ylim(view_lo - pad, view_hi + pad)
    for value, side in ((lower, "lower"), (upper, "upper")):
        ax.axhline(value, color="tab:red", ls="--", lw=0.9, gid=f"joint_limit_{side}",
                   label="joint limit (\u2191/\u2193 value at the right: off scale)" if legend and side == "lower" else None)
    for value, side, y, va, arrow in ((lower, "lower", 0.0, "bottom", "\u2193"), (upper, "upper", 1.0, "top", "\u2191")):
        if not view_lo - pad <= value <= view_hi + pad:
            ax.text(1.005, y, f"{arrow} {value:.3f}", transform=ax.transAxes, ha="left", va=va, fontsize=7,
                    color="tab:red", gid=f"joint_limit_{side}_off_scale")


def joints_figure(rep: BagReplay, meta: PolicyMetadata) -> Figure:
    """The per-joint figure of :func:`plot_joints` (one axis per action joint, top to bottom)."""
    dec = rep.decisions
    t0 = dec.ticks_ns[0]
    t_rec = (dec.action_ticks_ns - t0) * 1e-9
    t_dec = (dec.ticks_ns - t0) * 1e-9
    a = meta.action_dim
    fig = Figure(figsize=(10, 1.8 * a + 0.6), layout="constrained")
    axes = fig.subplots(a, 1, sharex=True, squeeze=False)[:, 0]
    step_s = meta.control_period_s * np.arange(meta.horizon)
    drawn = np.unique(np.linspace(0, len(t_dec) - 1, min(CHUNKS_DRAWN, len(t_dec))).astype(int))
    masks = hold_masks(rep, meta)
    spans = {label: mask_spans(t_dec, mask, meta.control_period_s) for label, mask in masks.items()}
    for j, ax in enumerate(axes):
        for label, runs in spans.items():
            for k, (start, end) in enumerate(runs):
                ax.axvspan(start, end, color=HOLD_COLOURS[label], alpha=0.18, lw=0, gid=label,
                           label=f"{label} ({int(masks[label].sum())} decisions)" if j == 0 and k == 0 else None)
        ax.plot(t_rec, dec.actions[:, j], color="black", lw=1.0, label="recorded")
        ax.plot(t_dec, rep.predicted[:, 0, j], color="tab:blue", lw=0.8, label="predicted (first action)")
        for k, d in enumerate(drawn):
            ax.plot(t_dec[d] + step_s, rep.predicted[d, :, j], color="tab:orange", lw=0.8,
                    label="predicted chunk" if k == 0 else None)
        shown = np.concatenate([dec.actions[:, j], rep.predicted[:, 0, j], rep.predicted[drawn, :, j].ravel()])
        _limit_view(ax, shown.astype(np.float64), meta.limits.lower[j], meta.limits.upper[j], j == 0)
        ax.set_ylabel(f"{meta.action_joint_names[j]}\n(rad)", fontsize=8)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=7)
    fallback = rep.source.action_fallback
    recorded = (f"{fallback['used_topic']}: no {fallback['wanted_topic']} in the bag" if fallback
                else rep.source.action_source)
    fig.suptitle(f"{rep.source.path.name}: predicted vs recorded ({recorded})", fontsize=10)
    axes[-1].set_xlabel("time since first decision (s)")
    return fig


def plot_joints(path: Path, rep: BagReplay, meta: PolicyMetadata) -> Path:
    """Per joint: recorded action per tick, predicted first action per decision, a few whole chunks
    (rad vs s), the joint limits (dashed red; off scale when far from the data) and the decisions
    the node would hold, shaded by reason (:func:`hold_masks`)."""
    return _save(joints_figure(rep, meta), path)


def plot_density(path: Path, rep: BagReplay) -> Path:
    """Observation log-likelihood per decision over time (nats vs s) with the calibrated threshold;
    the decisions below it marked."""
    dec, report = rep.decisions, rep.report["density"]
    t = (dec.ticks_ns - dec.ticks_ns[0]) * 1e-9
    scores = np.asarray(rep.scores, float)
    fig = Figure(figsize=(9, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(t, scores, lw=1.0, label="log-likelihood")
    low = scores < report["threshold"]
    ax.plot(t[low], scores[low], "r.", ms=3, label=f"below threshold ({report['flagged_fraction']:.1%})")
    ax.axhline(report["threshold"], color="k", ls="--", lw=1.0, label=f"threshold {report['threshold']:.2f}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("log p(observation) (nats)")
    ax.set_title(f"observation density, {Path(rep.report['bag']).name}")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_horizon_error(path: Path, rep: BagReplay) -> Path:
    """MAE and RMSE (rad, mean over joints) vs time into the chunk (s)."""
    horizon = rep.report["horizon"]
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(horizon["step_time_s"], horizon["mae_rad"], marker="o", label="MAE")
    ax.plot(horizon["step_time_s"], horizon["rmse_rad"], marker="s", label="RMSE")
    ax.set_xlabel("time into chunk, (i+1)·dt (s)")
    ax.set_ylabel("error (rad)")
    ax.set_title(f"{rep.source.path.name}: error vs horizon step")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_cameras(path: Path, rep: BagReplay, meta: PolicyMetadata, count: int = CAMERA_DECISIONS) -> Path:
    """For ``count`` evenly spaced decisions, one row each: the frame of every camera the decision was
    paired with, then its predicted chunk beside the recorded actions that followed (rad vs time
    into the chunk, s; one colour per joint, recorded dashed)."""
    dec = rep.decisions
    cameras = list(dec.images)
    rows = np.unique(np.linspace(0, len(dec.ticks_ns) - 1, min(count, len(dec.ticks_ns))).astype(int))
    fig = Figure(figsize=(3 * len(cameras) + 6, 2.6 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(cameras) + 1, squeeze=False,
                        gridspec_kw={"width_ratios": [1] * len(cameras) + [2]})
    step_s = meta.control_period_s * np.arange(1, meta.horizon + 1)
    colours = [f"C{j % 10}" for j in range(meta.action_dim)]
    t0 = dec.ticks_ns[0]
    for r, d in enumerate(rows):
        for c, name in enumerate(cameras):
            ax = axes[r, c]
            ax.imshow(dec.images[name][d], interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(f"{name} @ {(dec.ticks_ns[d] - t0) * 1e-9:.2f} s", fontsize=8)
        ax = axes[r, -1]
        valid = dec.valid[d]
        for j in range(meta.action_dim):
            ax.plot(step_s, rep.predicted[d, :, j], color=colours[j], lw=1.0,
                    label=meta.action_joint_names[j] if r == 0 else None)
            ax.plot(step_s[valid], dec.targets[d, valid, j], color=colours[j], lw=0.8, ls="--")
        ax.set_ylabel("rad", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, -1].set_title("predicted chunk (solid) vs recorded (dashed)", fontsize=9)
    axes[0, -1].legend(loc="upper right", fontsize=6, ncol=2)
    axes[-1, -1].set_xlabel("time into chunk, (i+1)·dt (s)")
    fig.suptitle(f"{rep.source.path.name}: camera frames and the chunks predicted from them", fontsize=10)
    return _save(fig, path)


def plot_summary(path: Path, report: dict[str, Any]) -> Path:
    """One plot over all bags of a replay report: first-action MAE per bag (bags the node would have
    held on, or whose predictions broke a limit, in red), error vs horizon step (each bag thin, all
    bags thick), MAE per joint, and the safety fractions per bag (%)."""
    bags = report["bags"]
    overall = report["overall"]
    n = len(bags)
    x = np.arange(n)
    fig = Figure(figsize=(12, 7.5), layout="constrained")
    (ax_bag, ax_h), (ax_joint, ax_safe) = fig.subplots(2, 2)

    def first_mae(bag: dict[str, Any]) -> float:
        return bag["first_action"]["mae_rad"] if bag.get("first_action") else np.nan

    def fraction(bag: dict[str, Any], key: str) -> float:
        value = bag["safety"].get(key)
        return np.nan if value is None else 100.0 * value

    alarmed = np.array([bool(bag["invalid_outputs"] or (bag["safety"].get("ood_fraction") or 0)
                             or bag["safety"]["outside_limits_fraction"] or bag["safety"]["velocity_violation_fraction"])
                        for bag in bags])
    mae = np.array([first_mae(bag) for bag in bags])
    ax_bag.bar(x[~alarmed], mae[~alarmed], width=1.0 if n > 40 else 0.8, color="tab:blue", label="bag")
    if alarmed.any():
        ax_bag.bar(x[alarmed], mae[alarmed], width=1.0 if n > 40 else 0.8, color="tab:red",
                   label="bag with OOD / invalid / limit or velocity violations")
    ax_bag.axhline(overall["first_action_mae_rad"], color="black", lw=1, ls="--",
                   label=f"all bags {overall['first_action_mae_rad']:.3g} rad")
    ax_bag.set_xlabel("bag (in the order given)")
    ax_bag.set_ylabel("first-action MAE (rad)")
    ax_bag.set_title(f"first action vs recorded, {n} bag(s)")
    ax_bag.legend(fontsize=7, loc="best")

    for bag in bags:
        if bag.get("horizon"):
            ax_h.plot(bag["horizon"]["step_time_s"], bag["horizon"]["mae_rad"], color="tab:blue", lw=0.5, alpha=0.25)
    if overall["horizon_mae_rad"] is not None:
        steps = bags[0]["horizon"]["step_time_s"] if bags[0].get("horizon") else None
        if steps is not None:
            ax_h.plot(steps, overall["horizon_mae_rad"], color="black", lw=2, marker="o", ms=3, label="all bags")
            ax_h.legend(fontsize=7)
    ax_h.set_xlabel("time into chunk, (i+1)·dt (s)")
    ax_h.set_ylabel("MAE (rad)")
    ax_h.set_title("error vs horizon step (thin: one bag)")
    ax_h.grid(alpha=0.3)

    names = report["model"]["action_joint_names"]
    per_joint = np.array([[bag["per_joint"][name]["mae_rad"] if bag.get("per_joint") else np.nan for name in names]
                          for bag in bags])
    weights = np.array([bag["decisions"] - bag["invalid_outputs"] for bag in bags], dtype=np.float64)
    finite = np.isfinite(per_joint).all(axis=1) & (weights > 0)
    joint_mae = (np.average(per_joint[finite], axis=0, weights=weights[finite]) if finite.any()
                 else np.full(len(names), np.nan))
    ax_joint.bar(np.arange(len(names)), joint_mae, color="tab:blue")
    ax_joint.set_xticks(np.arange(len(names)), [name.rsplit("_", 1)[-1] if len(name) > 10 else name for name in names],
                        fontsize=8)
    ax_joint.set_xlabel(f"action joint ({names[0]} ...)" if names and len(names[0]) > 10 else "action joint")
    ax_joint.set_ylabel("MAE over the chunk (rad)")
    ax_joint.set_title("error per joint (all bags, decision-weighted)")

    highest = 0.0
    for key, label, color in (("ood_fraction", "out of distribution (decisions)", "tab:purple"),
                              ("outside_limits_fraction", "outside the limits (commands)", "tab:red"),
                              ("velocity_violation_fraction", "beyond the velocity limit (steps)", "tab:orange")):
        values = np.array([fraction(bag, key) for bag in bags])
        ax_safe.plot(x, values, marker="o" if n <= 40 else None, ms=3, lw=1, color=color, label=label)
        highest = max(highest, float(np.nanmax(values, initial=0.0)))
    ax_safe.set_xlabel("bag (in the order given)")
    ax_safe.set_ylabel("% of the bag")
    ax_safe.set_ylim(-0.5, max(5.0, 1.3 * highest))  # 0 % sits visibly on the axis; room for the legend
    for ax in (ax_bag, ax_safe):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    safety = overall["safety"]
    ood = "guard off" if safety["ood_fraction"] is None else f"{safety['ood_fraction']:.1%} OOD"
    ax_safe.set_title(f"safety: {ood}, {safety['outside_limits_fraction']:.1%} outside limits, "
                      f"{safety['velocity_violation_fraction']:.1%} too fast", fontsize=10)
    ax_safe.legend(fontsize=7, loc="upper left")
    ax_safe.grid(alpha=0.3)
    fig.suptitle(f"replay of {report['model']['name']}: {overall['decisions']} decisions in {n} bag(s), "
                 f"first-action MAE {overall['first_action_mae_rad']:.3g} rad, MAE {overall['mae_rad']:.3g} rad")
    return _save(fig, path)
