"""Scripted experts in the real simulation: smooth, within limits, successful, recorded."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from flow_policy_ros.policy.config import IIWA_JOINT_NAMES, IIWA_VELOCITY_LIMIT
from flow_policy_ros.sim.env import STAMP_BASE_NS, SimEnv
from flow_policy_ros.sim.experts import PEAK_VELOCITY_FRACTION, ScriptedExpert, fit_trajectory
from flow_policy_ros.sim.rollout import run_expert_episode
from flow_policy_ros.sim.tasks import TIME_LIMIT_S, sample_episode


@pytest.fixture(scope="module")
def env():
    with SimEnv() as sim:
        yield sim


@pytest.fixture(scope="module")
def expert():
    planner = ScriptedExpert()
    yield planner
    planner.close()


def test_trajectory_passes_waypoints_within_the_velocity_limit() -> None:
    waypoints = np.array([np.zeros(7), np.linspace(0.2, 0.8, 7), np.linspace(0.5, -0.5, 7)])
    trajectory = fit_trajectory(waypoints)
    for t, q in zip(trajectory.times_s, waypoints):
        assert np.allclose(trajectory.position(t), q)
    times = np.linspace(0.0, trajectory.duration_s, 2001)
    velocities = np.array([trajectory.sample(t)[1] for t in times])
    peak = np.max(np.abs(velocities) / np.asarray(IIWA_VELOCITY_LIMIT))
    assert peak <= PEAK_VELOCITY_FRACTION + 1e-6 and peak > 0.8 * PEAK_VELOCITY_FRACTION
    positions = np.array([trajectory.position(t) for t in times])
    numeric = np.gradient(positions, times, axis=0)
    assert np.max(np.abs(numeric - velocities)) < 1e-2  # velocity continuous, matches positions
    assert np.array_equal(trajectory.position(trajectory.duration_s + 5.0), waypoints[-1])  # hold


@pytest.mark.parametrize("task,seed", [("reach", 0), ("reach", 1), ("reach", 2), ("reach_around", 0),
                                       ("reach_around", 1), ("reach_around", 2), ("reach_around", 5)])
def test_expert_succeeds_and_takes_its_side(env: SimEnv, expert: ScriptedExpert, task: str, seed: int) -> None:
    recording = run_expert_episode(task, seed, env=env, expert=expert)
    meta = recording.metadata
    assert meta["success"] and not meta["self_collision"] and not meta["obstacle_contact"]
    assert meta["clipped_commands"] == 0
    assert 2.0 <= meta["expert_motion_s"] <= 4.0
    assert meta["final_distance_m"] < 0.005  # it holds at the goal
    if task == "reach_around":
        assert meta["route"] == meta["expert_side"]
    else:
        assert meta["route"] is None


def test_straight_line_through_reach_around_hits_the_obstacle(env: SimEnv, expert: ScriptedExpert) -> None:
    """The average of the two routes is the straight line, and it collides."""
    for seed in range(3):
        spec = sample_episode("reach_around", seed)
        trajectory = expert.plan(dataclasses.replace(spec, task="reach", expert_side=None))
        env.reset_to(spec)
        while not env.done:
            env.step(trajectory.position(env.next_tick_time_s))
        assert env.status().obstacle_contact and not env.success


def test_recording_layout_and_stamps(env: SimEnv, expert: ScriptedExpert) -> None:
    rec = run_expert_episode("reach", 3, env=env, expert=expert)
    n_ticks = round(TIME_LIMIT_S / 0.02)
    assert rec.joint_names == list(IIWA_JOINT_NAMES) == rec.command_joint_names
    assert len(rec.joint_times_ns) == n_ticks * 4.8 + 1  # every physics step of 6 s, plus t = 0
    assert rec.joint_times_ns[0] == STAMP_BASE_NS and np.all(np.diff(rec.joint_times_ns) > 0)
    assert rec.commands.shape == (n_ticks, 7)
    assert rec.goal_times_ns.tolist() == [STAMP_BASE_NS + k * 1_000_000_000 for k in range(7)]
    # the observation of tick k is the joint state stamped exactly t_k
    assert set(rec.command_times_ns.tolist()) <= set(rec.joint_times_ns.tolist())
    assert rec.metadata["control_period_s"] == 0.02 and rec.metadata["seed"] == 3


def test_episodes_are_bitwise_reproducible(env: SimEnv, expert: ScriptedExpert) -> None:
    a = run_expert_episode("reach_around", 4, env=env, expert=expert)
    run_expert_episode("reach", 9, env=env, expert=expert)
    with SimEnv() as other:
        b = run_expert_episode("reach_around", 4, env=other)
    assert np.array_equal(a.positions, b.positions) and np.array_equal(a.velocities, b.velocities)
    assert np.array_equal(a.commands, b.commands) and np.array_equal(a.joint_times_ns, b.joint_times_ns)


def test_env_refuses_steps_after_the_end_and_before_reset() -> None:
    with SimEnv(record=False) as sim:
        with pytest.raises(RuntimeError, match="reset"):
            sim.observe()
        spec = sim.reset("reach", 0)
        obs = sim.observe()
        assert obs.vector().shape == (17,) and np.array_equal(obs.goal, spec.goal)
        while not sim.done:
            sim.step(obs.positions)
        with pytest.raises(RuntimeError, match="episode is over"):
            sim.step(obs.positions)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["reach", "reach_around", "reach_object"])
def test_expert_success_rate_on_held_out_seeds(env: SimEnv, expert: ScriptedExpert, task: str) -> None:
    seeds = range(5000, 5015)
    successes = sum(run_expert_episode(task, s, env=env, expert=expert).metadata["success"] for s in seeds)
    assert successes >= len(seeds) - 1
