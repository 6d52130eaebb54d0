"""In-memory form of one recorded episode: the time series a rosbag2 episode holds.

This is the hand-off between the simulator (which produces episodes), ``bag.py`` (which
writes and reads them as rosbag2) and ``dataset.py`` (which cuts them into training windows).
Pure numpy; times are integer nanoseconds on one clock (the bag's receive/log time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flow_policy_ros.data.images import ImageSeries
from flow_policy_ros.data.targets import TargetSeries
from flow_policy_ros.errors import DatasetError

#: The vector feature stored in ``goals``/``goal_times_ns``.
GOAL_FEATURE = "goal"


@dataclass
class EpisodeRecording:
    """One episode as time series.

    Attributes:
        joint_names: names of the joints in ``positions``/``velocities`` columns.
        joint_times_ns: (T,) int64, stamp of each joint state sample.
        positions: (T, J) float64, joint positions (rad).
        velocities: (T, J) float64, joint velocities (rad/s).
        goal_times_ns: (G,) int64, stamp of each goal message.
        goals: (G, 3) float64, goal points (m, world frame).
        command_joint_names: joint order of ``commands`` columns.
        command_times_ns: (C,) int64, stamp of each position command (may be empty).
        commands: (C, J) float64, commanded joint positions (rad).
        metadata: episode facts (task, seed, success, route, ...), JSON-able.
        targets: the controller's position targets over time, for the action sources
            'joint_trajectory' and 'controller_state' (None otherwise).
        images: camera name -> its frames (uint8 RGB, ~27 kB per 96 x 96 frame: a 6 s
            episode at 12.5 Hz holds 76 frames, 2.1 MB); empty without a camera.
        vectors: vector observation features other than the goal, by feature name: (times (V,)
            int64 ns, values (V, size) float64).
    """

    joint_names: list[str]
    joint_times_ns: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    goal_times_ns: np.ndarray
    goals: np.ndarray
    command_joint_names: list[str] = field(default_factory=list)
    command_times_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    commands: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    metadata: dict[str, Any] = field(default_factory=dict)
    targets: TargetSeries | None = None
    images: dict[str, ImageSeries] = field(default_factory=dict)
    vectors: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.joint_times_ns = np.asarray(self.joint_times_ns, dtype=np.int64)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.velocities = np.asarray(self.velocities, dtype=np.float64)
        self.goal_times_ns = np.asarray(self.goal_times_ns, dtype=np.int64)
        self.goals = np.asarray(self.goals, dtype=np.float64).reshape(-1, 3)
        self.command_times_ns = np.asarray(self.command_times_ns, dtype=np.int64)
        self.commands = np.asarray(self.commands, dtype=np.float64)
        n_joints = len(self.joint_names)
        t = len(self.joint_times_ns)
        if self.positions.shape != (t, n_joints) or self.velocities.shape != (t, n_joints):
            raise ValueError(
                f"EpisodeRecording: positions {self.positions.shape} and velocities "
                f"{self.velocities.shape} must both be ({t}, {n_joints})"
            )
        if len(self.goals) != len(self.goal_times_ns):
            raise ValueError(
                f"EpisodeRecording: {len(self.goals)} goals but {len(self.goal_times_ns)} goal stamps"
            )
        if len(self.command_times_ns):
            expected = (len(self.command_times_ns), len(self.command_joint_names))
            if self.commands.shape != expected:
                raise ValueError(f"EpisodeRecording: commands {self.commands.shape} must be {expected}")
        for name, (times, values) in self.vectors.items():
            if len(times) != len(values):
                raise ValueError(f"EpisodeRecording: {len(values)} {name} values but {len(times)} stamps")

    def vector_series(self, name: str, source: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(times (V,) int64 ns, values (V, size) float64) of vector feature ``name``; the goal
        lives in ``goal_times_ns``/``goals`` (the bag layout's /goal topic)."""
        if name == GOAL_FEATURE:
            return self.goal_times_ns, self.goals
        if name not in self.vectors:
            raise DatasetError(f"{source or 'recording'}: no {name!r} messages recorded (the model observes {name!r})")
        times, values = self.vectors[name]
        return np.asarray(times, np.int64), np.asarray(values, np.float64).reshape(len(times), -1)
