"""PNG plots of a replay (matplotlib, Agg canvas: no display, no global backend switch).

Each plot is written to a temp file beside the target and renamed, so a reader never sees a
half-written PNG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flow_policy_ros.runtime.metadata import PolicyMetadata

if TYPE_CHECKING:
    from flow_policy_ros.data.replay import BagReplay

#: Chunks drawn whole in the per-joint plot (evenly spaced), to show what a chunk looks like.
CHUNKS_DRAWN = 12


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    FigureCanvasAgg(fig)
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    return path


def plot_joints(path: Path, rep: BagReplay, meta: PolicyMetadata) -> Path:
    """Per joint: recorded action per tick, predicted first action per decision, a few whole chunks (rad vs s)."""
    dec = rep.decisions
    t0 = dec.ticks_ns[0]
    t_rec = (dec.action_ticks_ns - t0) * 1e-9
    t_dec = (dec.ticks_ns - t0) * 1e-9
    a = meta.action_dim
    fig = Figure(figsize=(10, 1.8 * a), layout="constrained")
    axes = fig.subplots(a, 1, sharex=True, squeeze=False)[:, 0]
    step_s = meta.control_period_s * np.arange(meta.horizon)
    drawn = np.unique(np.linspace(0, len(t_dec) - 1, min(CHUNKS_DRAWN, len(t_dec))).astype(int))
    for j, ax in enumerate(axes):
        ax.plot(t_rec, dec.actions[:, j], color="black", lw=1.0, label="recorded")
        ax.plot(t_dec, rep.predicted[:, 0, j], color="tab:blue", lw=0.8, label="predicted (first action)")
        for k, d in enumerate(drawn):
            ax.plot(t_dec[d] + step_s, rep.predicted[d, :, j], color="tab:orange", lw=0.8,
                    label="predicted chunk" if k == 0 else None)
        ax.set_ylabel(f"{meta.action_joint_names[j]}\n(rad)", fontsize=8)
    axes[0].legend(loc="upper right", fontsize=7)
    axes[0].set_title(f"{rep.source.path.name}: predicted vs recorded ({rep.source.action_source})")
    axes[-1].set_xlabel("time since first decision (s)")
    return _save(fig, path)


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
