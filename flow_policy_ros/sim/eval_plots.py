"""PNG plots of a closed-loop evaluation (matplotlib Agg canvas: no display, no global backend switch).

* ``ee_paths_xy.png``: end-effector paths seen from above (x-y, m), green = success,
  red = failure, goal markers, the reach_around posts and the nominal start.
* ``command_traces.png``: per-joint clamped commands (rad vs s) of up to two episodes (the
  first success and the first failure when both exist), chunk seams as vertical lines.

Each plot is written to a temp file beside the target and renamed, so a reader never sees a
half-written PNG.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle

from flow_policy_ros.runtime.metadata import PolicyMetadata
from flow_policy_ros.sim.closed_loop import EpisodeResult
from flow_policy_ros.sim.tasks import NOMINAL_START_EE

SUCCESS_COLOR = "#2ca02c"
FAILURE_COLOR = "#d62728"
OBSTACLE_COLOR = "#7f7f7f"


def _save(fig: Figure, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    FigureCanvasAgg(fig)
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def plot_ee_paths(path: Path, results: Sequence[EpisodeResult], task: str, title: str = "") -> Path:
    """EE paths from above (x-y, m) coloured by outcome; goals as crosses, posts as grey circles."""
    fig = Figure(figsize=(7.0, 6.5))
    ax = fig.add_subplot(1, 1, 1)
    for r in sorted(results, key=lambda r: r.success):  # successes drawn last, on top
        color = SUCCESS_COLOR if r.success else FAILURE_COLOR
        ax.plot(r.ee_path[:, 0], r.ee_path[:, 1], color=color, lw=1.0, alpha=0.7)
        ax.plot(*r.goal[:2], marker="x", color=color, ms=7, mew=2)
        if r.obstacle is not None:
            x, y, radius = r.obstacle
            ax.add_patch(Circle((x, y), radius, facecolor=OBSTACLE_COLOR, edgecolor="k", lw=0.5, alpha=0.25))
    ax.plot(*NOMINAL_START_EE[:2], marker="o", color="k", ms=6)
    successes = sum(r.success for r in results)
    handles = [
        Line2D([], [], color=SUCCESS_COLOR, label=f"success ({successes})"),
        Line2D([], [], color=FAILURE_COLOR, label=f"failure ({len(results) - successes})"),
        Line2D([], [], color="k", marker="x", ls="", label="goal"),
        Line2D([], [], color="k", marker="o", ls="", label="nominal start"),
    ]
    if task == "reach_around":
        handles.append(Line2D([], [], color=OBSTACLE_COLOR, marker="o", ms=10, ls="", alpha=0.5, label="post (r = 4 cm)"))
    ax.legend(handles=handles, loc="best", fontsize=9)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x (m), forward")
    ax.set_ylabel("y (m), left")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or f"{task}: end-effector paths seen from above")
    fig.tight_layout()
    return _save(fig, path)


def trace_episodes(results: Sequence[EpisodeResult], count: int = 2) -> list[EpisodeResult]:
    """Episodes to trace: the first success and the first failure if both exist, else the first ``count``."""
    first_ok = next((r for r in results if r.success), None)
    first_bad = next((r for r in results if not r.success), None)
    if first_ok is not None and first_bad is not None:
        return [first_ok, first_bad][:count]
    return list(results[:count])


def plot_command_traces(path: Path, results: Sequence[EpisodeResult], meta: PolicyMetadata, title: str = "") -> Path:
    """Per joint (rows) and episode (columns): clamped command (rad) vs time (s), chunk seams dotted."""
    episodes = trace_episodes(results)
    joints = meta.action_joint_names
    fig = Figure(figsize=(6.0 * len(episodes), 1.5 * len(joints) + 1.0))
    axes = fig.subplots(len(joints), len(episodes), sharex="col", squeeze=False)
    dt = meta.control_period_s
    for col, r in enumerate(episodes):
        t = np.arange(len(r.commands)) * dt
        color = SUCCESS_COLOR if r.success else FAILURE_COLOR
        for row, name in enumerate(joints):
            ax = axes[row, col]
            for tick in r.chunk_ticks[1:]:
                ax.axvline(tick * dt, color="0.6", lw=0.6, ls=":")
            ax.plot(t, r.commands[:, row], color=color, lw=1.2)
            ax.set_ylabel(f"joint {name.rsplit('_', 1)[-1]} (rad)", fontsize=8)
            ax.tick_params(labelsize=7)
        outcome = "success" if r.success else f"failure: {r.failure}"
        axes[0, col].set_title(f"episode seed {r.seed} ({outcome}); dotted = chunk seams", fontsize=9)
        axes[-1, col].set_xlabel("time (s)")
    fig.suptitle(title or f"{meta.name}: commanded joint positions", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def write_plots(out: Path, results: Sequence[EpisodeResult], meta: PolicyMetadata, task: str) -> list[Path]:
    """Write both plots into ``out`` (created); returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not results:
        return []
    return [
        plot_ee_paths(out / "ee_paths_xy.png", results, task, title=f"{meta.name} on {task}: end-effector paths (top view)"),
        plot_command_traces(out / "command_traces.png", results, meta),
    ]
