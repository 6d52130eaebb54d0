"""Offline evaluation of an ONNX policy on rosbag2 recordings: ``flow-policy replay``.

For every bag, the observation at each decision time is rebuilt from the recorded topics with
the training windowing (:mod:`flow_policy_ros.policy.dataset`: joints by name, linear interpolation
onto the control grid, goal held), the policy predicts a chunk there, and the chunk is compared
with what actually followed.

The work is split by job:

- :mod:`~flow_policy_ros.data.replay_source`: reading a bag (joint map, action source and its
  fallback, vector features, cameras) into a :class:`~flow_policy_ros.data.replay_source.ReplaySource`;
- :mod:`~flow_policy_ros.data.replay_decisions`: decision times, observations and target chunks,
  seeded noise, batched prediction, latency;
- :mod:`~flow_policy_ros.data.replay_metrics`: errors, seam jerk, prefix consistency;
- :mod:`~flow_policy_ros.data.replay_safety`: the safety review and the observation density report;
- this module: one bag end to end (:func:`replay_bag`) and ``--write-bag`` (:func:`write_replay_bag`);
  :mod:`~flow_policy_ros.data.replay_plots` draws the plots, :mod:`flow_policy_ros.cli.replay` is the verb.

Imports neither torch nor pybullet. Inputs are only read; every output is written atomically.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flow_policy_ros.data import bag as bagio
from flow_policy_ros.data.config import DataConfig
from flow_policy_ros.data.replay_decisions import (
    DEFAULT_BATCH,
    Decisions,
    build_decisions,
    decision_noise,
    predict_batched,
    single_latency_ms,
)
from flow_policy_ros.data.replay_metrics import error_metrics, prefix_consistency, seam_jerk
from flow_policy_ros.data.replay_safety import SafetyReview, density_report, safety_review
from flow_policy_ros.data.replay_source import DEFAULT_TRAJECTORY_TOPIC, ReplaySource, read_source
from flow_policy_ros.errors import UsageError
from flow_policy_ros.runtime.chunking import DEFAULT_REPLAN_EVERY
from flow_policy_ros.runtime.metadata import PolicyMetadata
from flow_policy_ros.runtime.ood import DEFAULT_OOD_MARGIN

DEFAULT_POLICY_TOPIC = "/policy/joint_trajectory"


# --------------------------------------------------------------------------- one bag


@dataclass
class BagReplay:
    """Everything replay computed for one bag."""

    source: ReplaySource
    decisions: Decisions
    predicted: np.ndarray  # (N, H, A) float32, NaN rows where the output was invalid
    report: dict[str, Any] = field(default_factory=dict)
    invalid: np.ndarray | None = None  # (N,) bool
    safety: SafetyReview | None = None
    scores: np.ndarray | None = None  # (N,) observation log-likelihood (models with a density)


def replay_bag(path: Path, policy: Any, data_cfg: DataConfig = bagio.DEFAULT_DATA_CONFIG,
               joint_map: dict[str, str] | None = None, goal: Sequence[float] | None = None, seed: int = 0,
               guidance: float | None = None, batch_size: int = DEFAULT_BATCH, replan_every: int = DEFAULT_REPLAN_EVERY,
               trajectory_topic: str = DEFAULT_TRAJECTORY_TOPIC, latency_samples: int = 50,
               ood_margin: float = DEFAULT_OOD_MARGIN, rtc_prefix: int | None = None) -> BagReplay:
    """Read, rebuild decisions, predict (batched, seeded noise), score one bag and review its safety.

    Error metrics cover the decisions with a valid output (None when there is none); the seam
    jerk needs consecutive chunks and is None when any output is invalid. A real-time chunking
    model also gets ``prefix_consistency`` with d = ``rtc_prefix`` (None: its d_max).
    """
    meta: PolicyMetadata = policy.metadata
    t0 = time.perf_counter()
    src = read_source(path, meta, data_cfg, joint_map, goal, trajectory_topic)
    t1 = time.perf_counter()
    dec = build_decisions(src, meta)
    t2 = time.perf_counter()
    noise = decision_noise(seed, len(dec.ticks_ns), meta.horizon, meta.action_dim)
    pred = predict_batched(policy, dec.observations, noise, guidance, batch_size, dec.images)
    predicted, infer_s, ok = pred.chunks, pred.seconds, ~pred.invalid
    n = len(predicted)
    latency = {"batch_size": batch_size, "batched_per_decision_mean": infer_s * 1e3 / n,
               **single_latency_ms(policy, dec.observations[ok], noise[ok], guidance, latency_samples,
                                   {name: frames[ok] for name, frames in dec.images.items()})}
    if ok.any():
        metrics = error_metrics(predicted[ok], dec.targets[ok], dec.valid[ok], meta.action_joint_names,
                                meta.control_period_s)
    else:
        metrics = {"first_action": None, "per_joint": None, "overall": None, "horizon": None}
    review = safety_review(predicted, pred.invalid, dec, meta, ood_margin)
    wall_s = time.perf_counter() - t0  # all of this bag's work (the prefix check below excepted)
    report = {
        "bag": str(src.path), "action_source": src.action_source, "action_fallback": src.action_fallback,
        "goal_source": src.goal_source,
        "decisions": n, "duration_s": float((dec.ticks_ns[-1] - dec.ticks_ns[0]) * 1e-9),
        "first_decision_ns": int(dec.ticks_ns[0]),
        "skipped_joint_states": int(src.recording.metadata.get("skipped_joint_states", 0)),
        "image_topics": src.image_topics, "decisions_without_frame": dec.without_frame,
        "invalid_outputs": int(pred.invalid.sum()), "first_invalid_output": pred.first_invalid,
        **metrics,
        "seam_jerk": seam_jerk(predicted, dec.targets[:, 0, :], meta.control_period_s, replan_every) if ok.all() else None,
        "rtc_prefix": prefix_consistency(policy, dec, noise, guidance, rtc_prefix or meta.rtc_max_delay, batch_size)
        if meta.rtc else None,
        "safety": review.report,
        "density": density_report(pred.scores, meta),
        "latency_ms": latency,
        "timing_s": {"read": t1 - t0, "observations": t2 - t1, "inference": infer_s, "wall": wall_s},
        "decisions_per_s": {"inference": n / infer_s, "end_to_end": n / wall_s},  # end to end: on the wall clock
    }
    return BagReplay(src, dec, predicted, report, pred.invalid, review, pred.scores)


#: What --write-bag puts on the policy topic (repeated in the report).
WRITTEN_CONTENT = ("what policy_node would publish: each predicted chunk clamped by runtime.safety (joint limits, "
                   "velocity limit from the measured position); an empty JointTrajectory (hold) where the node would "
                   "hold: out of distribution, invalid model output, measured position beyond the limits")


def write_replay_bag(out: Path, replayed: BagReplay, meta: PolicyMetadata, topic: str = DEFAULT_POLICY_TOPIC) -> int:
    """New bag at ``out``: every original message copied plus one JointTrajectory per decision on ``topic``.

    Decision j's trajectory is :data:`WRITTEN_CONTENT` (the safety review's published chunk, or an
    empty trajectory where the node would hold), stamped and logged at its decision tick; point i
    at (i+1)·dt. Same storage as the input. Returns the number of trajectories written.
    """
    src = replayed.source.path
    if topic in bagio.list_topics(src):
        raise UsageError(f"{src}: already has a topic {topic}; choose another --policy-topic")
    storage = "mcap" if any(src.glob("*.mcap")) else "sqlite3"
    review = replayed.safety
    if review is None:
        raise UsageError(f"{src}: this replay has no safety review; replay_bag makes one")
    ticks = replayed.decisions.ticks_ns
    chunks = [np.zeros((0, meta.action_dim)) if held else chunk for chunk, held in zip(review.published, review.held)]
    names = list(meta.action_joint_names)
    j = 0
    with bagio.BagWriter(out, storage) as writer:
        def flush(until_ns: float) -> None:
            nonlocal j
            while j < len(ticks) and ticks[j] <= until_ns:
                t = int(ticks[j])
                writer.write(topic, bagio.JOINT_TRAJECTORY, bagio.joint_trajectory_msg(t, names, chunks[j], meta.control_period_s), t)
                j += 1
        for raw in bagio.iter_raw_messages(src):
            flush(raw.log_time_ns - 1)
            writer.write_raw(raw.topic, raw.msgtype, raw.data, raw.log_time_ns)
        flush(np.inf)
    return j
