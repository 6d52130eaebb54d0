"""Real rosbag2 files of one robot episode, recorded three ways: what a forward position controller
gets (Float64MultiArray per tick), what a JointTrajectoryController gets (JointTrajectory chunks,
replaced mid-chunk, joints shuffled, some stamps zero) and what the JTC publishes
(JointTrajectoryControllerState, at twice the control rate). All three hold the same executed
targets, so training must cut the same windows from each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flow_policy_ros.data import bag as bagio
from flow_policy_ros.policy.config import IIWA_JOINT_NAMES

EPOCH = 1_700_000_000_000_000_000
DT = 20_000_000  # ns, 50 Hz
NAMES = list(IIWA_JOINT_NAMES)
GOAL = np.array([0.4, -0.2, 0.6])
JTC_TOPIC = "/joint_trajectory_controller/joint_trajectory"
STATE_TOPIC = "/joint_trajectory_controller/controller_state"


@dataclass
class Chunk:
    start_tick: int
    positions: np.ndarray  # (n, 7) rad in NAMES order; point i is the target of tick start + i
    order: np.ndarray  # (7,) the message's joint order (a permutation of NAMES)
    zero_stamp: bool  # header.stamp = 0: the JTC (and the reader) use the receipt time


@dataclass
class Episode:
    chunks: list[Chunk]
    commands: np.ndarray  # (K, 7) rad: the target each tick executed, K = ticks the chunks cover


def make_episode(seed: int = 0, horizon: int = 8) -> Episode:
    """Chunks every 2-4 ticks (mid-chunk replacement), one gap longer than a chunk (the JTC holds)."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 7)
    chunks, tick = [], 0
    gaps = [3, 2, 4, 3, horizon + 3, 2, 3]
    for gap in [0, *gaps]:
        tick += gap
        k = tick + 1 + np.arange(horizon)[:, None]
        positions = 0.3 * np.sin(0.04 * k + phase) + rng.normal(0, 0.01, (horizon, 7))
        chunks.append(Chunk(tick, positions, rng.permutation(7), zero_stamp=bool(rng.random() < 0.3)))
    ticks = chunks[-1].start_tick + horizon
    commands = np.empty((ticks, 7))
    for k in range(ticks):
        c = [c for c in chunks if c.start_tick <= k][-1]  # the newest chunk started by tick k
        commands[k] = c.positions[min(k - c.start_tick, len(c.positions) - 1)]
    return Episode(chunks, commands)


def tick_ns(k: int | np.ndarray) -> int | np.ndarray:
    return EPOCH + DT * k


def write_joint_states_and_goal(writer: bagio.BagWriter, ticks: int, seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    writer.write("/goal", bagio.POINT_STAMPED, bagio.point_stamped_msg(EPOCH - DT, GOAL), EPOCH - DT)
    times = EPOCH - 5_000_000 + 10_000_000 * np.arange(2 * ticks + 2)  # 100 Hz, covers tick 0 .. tick K
    for t in times:
        s = (t - EPOCH) * 1e-9
        q, qd = 0.3 * np.sin(2.0 * s + np.arange(7)), 0.6 * np.cos(2.0 * s + np.arange(7))
        order = rng.permutation(7)
        writer.write("/joint_states", bagio.JOINT_STATE,
                     bagio.joint_state_msg(int(t), [NAMES[i] for i in order], q[order], qd[order]), int(t))


def write_episode(path: Path, episode: Episode, source: str, storage: str = "mcap", seed: int = 0) -> Path:
    """One bag of ``episode`` with its actions as ``source``: 'commands', 'joint_trajectory' or 'controller_state'."""
    ticks = len(episode.commands)
    with bagio.BagWriter(path, storage) as writer:
        write_joint_states_and_goal(writer, ticks, seed)
        if source == "commands":
            for k, cmd in enumerate(episode.commands):
                writer.write("/commands", bagio.FLOAT64_MULTI_ARRAY, bagio.float64_multi_array_msg(cmd), tick_ns(k))
        elif source == "joint_trajectory":
            for c in episode.chunks:
                t = tick_ns(c.start_tick)
                names = [NAMES[i] for i in c.order]
                msg = bagio.joint_trajectory_msg(0 if c.zero_stamp else t, names, c.positions[:, c.order], DT * 1e-9)
                writer.write(JTC_TOPIC, bagio.JOINT_TRAJECTORY, msg, t)
        elif source == "controller_state":
            rng = np.random.default_rng(seed + 2)
            # The JTC's reference at t_{k+1} is tick k's target; it publishes at 100 Hz, the samples
            # between two ticks lie on the line between them.
            for k in range(ticks):
                for half, ref in ((0, episode.commands[k]),
                                  (1, 0.5 * (episode.commands[k] + episode.commands[min(k + 1, ticks - 1)]))):
                    if half and k == ticks - 1:
                        break
                    t = tick_ns(k + 1) + half * DT // 2
                    order = rng.permutation(7)
                    msg = bagio.controller_state_msg(t, [NAMES[i] for i in order], ref[order], ref[order] - 0.001)
                    writer.write(STATE_TOPIC, bagio.CONTROLLER_STATE, msg, t)
        else:
            raise ValueError(source)
    return path
