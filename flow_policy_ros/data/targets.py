"""Position targets over time as a joint trajectory controller holds them (pure numpy).

A :class:`TargetSeries` is what the ``joint_trajectory`` and ``controller_state`` action sources
read from a bag: the position target (rad) of each joint at any time, on the bag's clock (int
ns). :mod:`flow_policy_ros.data.windows` samples it on the control grid.

- :func:`spliced_trajectories`: a stream of trajectory_msgs/JointTrajectory commands executed
  the way ros_controllers' JointTrajectoryController splices them
  (:mod:`flow_policy_ros.runtime.jtc_trajectory`, the one model of it): each trajectory starts at
  its start time (header.stamp, or the receipt time for a zero stamp) and replaces what was
  received before it from then on; linear from the previous target to its first point and
  between points, held after the last; an empty trajectory holds the target it finds.
  Before the first trajectory's first point the target is undefined (a JTC would start from the
  measured state, which the series does not know); a trajectory that starts earlier than that
  is spliced onto that first point. ros2_controllers' JTC switches to a new trajectory when it
  receives it and starts from its current state (the last command with ``open_loop_control``);
  for the usual stamps (zero, or the sender's tick, just before receipt) that is this splice up
  to the transport latency, and the previous target rather than the measured position.
- :func:`sampled_targets`: a sampled target signal (a JTC's published reference), linear
  between samples, defined from the first sample to the last.

Bad input raises :class:`~flow_policy_ros.errors.TimeSeriesError` with a one-line message
naming the message index; the bag reader adds the bag and the topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flow_policy_ros.errors import TimeSeriesError
from flow_policy_ros.runtime.jtc_trajectory import JtcTrajectory, Segment, sample_segments

#: How far (ns) a trajectory may start before the one received just before it. Senders mix
#: stamps legitimately by a fraction of a period: policy_node stamps a chunk with its nominal
#: tick, up to half a period after it publishes, and a stop (an empty trajectory) with zero, the
#: receipt time (a 4 ms rewind recorded by ``flow-policy demo --execution trajectory``). A rewind
#: beyond a second means stamps from another clock (sim time against wall time, say).
MAX_START_REWIND_NS = 1_000_000_000


@dataclass(frozen=True)
class TargetSeries:
    """Position targets (rad) of ``joint_names`` over time, defined on ``[start_ns, end_ns]``.

    Build it with :func:`spliced_trajectories` or :func:`sampled_targets`. Past ``end_ns`` the
    last target holds (a controller holds its final point).
    """

    joint_names: tuple[str, ...]
    segments: tuple[Segment, ...]  # the JTC model's segments, in start order
    start_ns: int
    end_ns: int

    def sample(self, times_ns: np.ndarray) -> np.ndarray:
        """Targets (K, A) float64 rad at ``times_ns`` (K,) int64; a time before ``start_ns`` is a TimeSeriesError."""
        times = np.asarray(times_ns, np.int64)
        if len(times) and times.min() < self.start_ns:
            raise TimeSeriesError(f"target time {int(times.min())} ns precedes the first defined target at "
                                  f"{self.start_ns} ns")
        return sample_segments(self.segments, times, len(self.joint_names))

    def renamed(self, names: Sequence[str]) -> TargetSeries:
        """The same series with its joints called ``names`` (same order)."""
        if len(names) != len(self.joint_names):
            raise TimeSeriesError(f"{len(names)} names for the {len(self.joint_names)} joints {list(self.joint_names)}")
        return TargetSeries(tuple(names), self.segments, self.start_ns, self.end_ns)

    @property
    def values(self) -> np.ndarray:
        """Every knot value (n, A) rad (trajectory points, references), for value checks."""
        return np.concatenate([s.values for s in self.segments])

    @property
    def times_ns(self) -> np.ndarray:
        """The time (n,) int64 ns of each of :attr:`values`."""
        return np.concatenate([s.times for s in self.segments])


def spliced_trajectories(joint_names: Sequence[str], starts_ns: Sequence[int],
                         point_offsets_ns: Sequence[np.ndarray], positions: Sequence[np.ndarray]) -> TargetSeries:
    """Trajectory commands, in the order received, → the targets a JTC executing them holds (module docstring).

    Args:
        joint_names: the A joints of every ``positions`` column.
        starts_ns: (C,) start time of each trajectory (header.stamp, or receipt time if zero),
            in receipt order. A trajectory replaces everything received before it from its start
            on, also one that starts later (it never became active); a start more than
            :data:`MAX_START_REWIND_NS` before the previous one is an error.
        point_offsets_ns: C arrays (n_c,) int64: each point's time_from_start, >= 0 and strictly
            increasing (n_c = 0: an empty trajectory, "hold").
        positions: C arrays (n_c, A) rad.

    Raises:
        TimeSeriesError: no trajectory with points, a start far before the previous one, times from
            start that are negative or do not increase, a position count that is not A.
    """
    names = tuple(joint_names)
    model = JtcTrajectory(len(names))  # no hold: undefined before the first trajectory
    prev_start: int | None = None
    for c, (start, offsets, pos) in enumerate(zip(starts_ns, point_offsets_ns, positions)):
        start = int(start)
        offsets = np.asarray(offsets, np.int64).reshape(-1)
        pos = np.asarray(pos, np.float64).reshape(len(offsets), -1) if len(offsets) else np.zeros((0, len(names)))
        if prev_start is not None and start < prev_start - MAX_START_REWIND_NS:
            raise TimeSeriesError(f"message #{c} starts at {start} ns, {(prev_start - start) * 1e-9:.3g} s before "
                                  f"message #{c - 1} at {prev_start} ns (stamps on another clock?)")
        prev_start = start
        if pos.shape[1] != len(names):
            raise TimeSeriesError(f"message #{c} has {pos.shape[1]} positions per point, expected {len(names)}")
        if len(offsets) and (offsets[0] < 0 or np.any(np.diff(offsets) <= 0)):
            raise TimeSeriesError(f"message #{c}: the points' time_from_start must be >= 0 and strictly increasing, "
                                  f"got {offsets.tolist()} ns")
        model.replace(start, start + offsets, pos)  # leading empty trajectories have nothing to hold
    segments = model.segments
    if not segments:
        raise TimeSeriesError("no trajectory with points")
    return TargetSeries(names, segments, int(segments[0].times[0]), int(segments[-1].times[-1]))


def sampled_targets(joint_names: Sequence[str], times_ns: np.ndarray, positions: np.ndarray) -> TargetSeries:
    """Target samples (T,) int64 ns, strictly increasing, with (T, A) rad → a series linear between them.

    Raises TimeSeriesError naming the first sample whose time does not increase.
    """
    times = np.asarray(times_ns, np.int64).reshape(-1)
    values = np.asarray(positions, np.float64).reshape(len(times), len(joint_names))
    if len(times) == 0:
        raise TimeSeriesError("no target samples")
    bad = np.flatnonzero(np.diff(times) <= 0)
    if len(bad):
        i = int(bad[0]) + 1
        raise TimeSeriesError(f"message #{i} is stamped {int(times[i])} ns, not after message #{i - 1} at "
                              f"{int(times[i - 1])} ns (stamps must increase)")
    return TargetSeries(tuple(joint_names), (Segment(int(times[0]), times, values),), int(times[0]), int(times[-1]))
