"""Task sampling and route classification (pure numpy; no simulation)."""

from __future__ import annotations

import numpy as np
import pytest

from flow_policy_ros.sim.kinematics import HOME_Q
from flow_policy_ros.sim.tasks import (
    GOAL_BOXES,
    NOMINAL_START_EE,
    OBSTACLE_RADIUS_M,
    OBSTACLE_TOP_BELOW_PATH_M,
    START_NOISE_RAD,
    TASKS,
    classify_route,
    obstacle_for_goal,
    sample_episode,
)


@pytest.mark.parametrize("task", TASKS)
def test_goals_and_starts_lie_in_the_documented_volumes(task: str) -> None:
    box = np.asarray(GOAL_BOXES[task])
    for seed in range(300):
        spec = sample_episode(task, seed)
        assert np.all(spec.goal >= box[:, 0]) and np.all(spec.goal <= box[:, 1]), (seed, spec.goal)
        assert np.max(np.abs(spec.start_q - np.asarray(HOME_Q))) <= START_NOISE_RAD


def test_sampling_is_deterministic_and_task_specific() -> None:
    a, b = sample_episode("reach", 7), sample_episode("reach", 7)
    assert np.array_equal(a.goal, b.goal) and np.array_equal(a.start_q, b.start_q)
    assert not np.array_equal(a.goal, sample_episode("reach", 8).goal)
    assert a.obstacle is None and a.expert_side is None


def test_reach_around_obstacle_is_a_function_of_the_goal_between_start_and_goal() -> None:
    sides = []
    for seed in range(200):
        spec = sample_episode("reach_around", seed)
        assert spec.obstacle == obstacle_for_goal(spec.goal)
        center = np.asarray(spec.obstacle.center_xy)
        assert np.allclose(center, (np.asarray(NOMINAL_START_EE[:2]) + spec.goal[:2]) / 2)
        assert spec.obstacle.radius_m == OBSTACLE_RADIUS_M
        top = min(spec.goal[2], NOMINAL_START_EE[2]) - OBSTACLE_TOP_BELOW_PATH_M
        assert spec.obstacle.height_m == pytest.approx(top)
        sides.append(spec.expert_side)
    assert 80 <= sides.count("left") <= 120 and sides.count("left") + sides.count("right") == 200


def test_route_classification_from_the_path() -> None:
    goal = np.array([0.74, 0.0, 0.45])
    s = np.linspace(0.0, 1.0, 50)[:, None]
    start, end = np.asarray(NOMINAL_START_EE), goal
    bump = np.sin(np.pi * s) * np.array([0.0, 0.17, 0.0])
    straight = start + s * (end - start)
    assert classify_route(straight + bump, goal) == "left"
    assert classify_route(straight - bump, goal) == "right"
    assert classify_route(straight[:10], goal) == "none"  # never got past the obstacle
    assert classify_route((straight + bump)[:, :2], goal) == "left"
    with pytest.raises(ValueError, match=r"\(T, 2\) or \(T, 3\)"):
        classify_route(np.zeros(5), goal)


def test_bad_task_or_seed_is_named() -> None:
    with pytest.raises(ValueError, match="'push'"):
        sample_episode("push", 0)
    with pytest.raises(ValueError, match="-1"):
        sample_episode("reach", -1)
