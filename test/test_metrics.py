"""metrics: the Wilson interval and the smoothness peaks, against sequences with known derivatives."""

from __future__ import annotations

import numpy as np

from flow_policy_ros.metrics import episode_peaks, mean_overall_peaks, overall_peaks

DT = 0.02


def test_constant_acceleration_has_that_peak_and_no_jerk():
    t = np.arange(50) * DT
    commands = np.stack([0.5 * 3.0 * t**2, -0.5 * 1.0 * t**2], axis=1)  # 3 and -1 rad/s^2
    peaks = overall_peaks(commands, DT)
    assert abs(peaks["accel"] - 3.0) < 1e-9 and peaks["jerk"] < 1e-6


def test_cubic_has_its_jerk_exactly():
    t = np.arange(40) * DT
    commands = (2.0 * t**3 / 6.0)[:, None]  # jerk 2 rad/s^3, acceleration 2 t
    peaks = overall_peaks(commands, DT)
    assert abs(peaks["jerk"] - 2.0) < 1e-6
    assert abs(peaks["accel"] - 2.0 * t[-2]) < 1e-6  # the second difference is centred one tick early


def test_a_step_at_a_seam_is_seen_at_the_seam_only():
    commands = np.zeros((30, 1))
    commands[12:] = 0.01  # a 0.01 rad jump entering tick 12 (a chunk seam)
    split = episode_peaks(commands, [12], DT)
    assert abs(split["accel_seam"] - 0.01 / DT**2) < 1e-9 and split["accel_inside"] == 0.0
    assert abs(overall_peaks(commands, DT)["accel"] - 0.01 / DT**2) < 1e-9


def test_mean_over_episodes():
    t = np.arange(20) * DT
    a = (0.5 * 2.0 * t**2)[:, None]
    b = (0.5 * 4.0 * t**2)[:, None]
    mean = mean_overall_peaks([a, b, np.zeros((2, 1))], DT)  # the 2-tick episode has no second difference
    assert abs(mean["accel_rad_s2"] - 3.0) < 1e-9 and mean["episodes"] == 2
