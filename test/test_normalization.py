"""Normalization statistics: exact affine maps, floors for constant dimensions, loud when missing."""

from __future__ import annotations

import numpy as np
import pytest

from flow_policy_ros.policy.normalization import MIN_SCALE, NormalizationStats, StatisticsError


def test_minmax_maps_the_training_range_to_unit_interval():
    rng = np.random.default_rng(0)
    obs = rng.uniform(-3, 5, size=(200, 4))
    obs[:, 3] = 2.5  # constant dimension
    actions = rng.uniform(-1, 2, size=(200, 6, 3))
    stats = NormalizationStats.fit(obs, actions, "minmax")
    obs_n = stats.normalize_obs(obs)
    assert np.allclose(obs_n[:, :3].min(axis=0), -1) and np.allclose(obs_n[:, :3].max(axis=0), 1)
    assert stats.obs_scale[3] == MIN_SCALE and np.all(obs_n[:, 3] == 0)
    act_n = stats.normalize_actions(actions)
    assert np.allclose(act_n.reshape(-1, 3).min(axis=0), -1) and np.allclose(act_n.reshape(-1, 3).max(axis=0), 1)
    np.testing.assert_allclose(stats.unnormalize_actions(act_n), actions, atol=1e-12)


def test_meanstd_and_dict_round_trip():
    rng = np.random.default_rng(1)
    stats = NormalizationStats.fit(rng.normal(3, 2, (500, 2)), rng.normal(-1, 0.5, (500, 4, 2)), "meanstd")
    obs_n = stats.normalize_obs(rng.normal(3, 2, (500, 2)))
    assert abs(obs_n.mean()) < 0.2 and abs(obs_n.std() - 1) < 0.2
    again = NormalizationStats.from_dict(stats.to_dict())
    for name in ("obs_shift", "obs_scale", "act_shift", "act_scale"):
        np.testing.assert_array_equal(getattr(again, name), getattr(stats, name))


def test_missing_or_bad_statistics_are_errors():
    stats = NormalizationStats.fit(np.zeros((3, 2)), np.zeros((3, 2, 1)))
    data = stats.to_dict()
    del data["act_scale"]
    with pytest.raises(StatisticsError, match=r"missing statistic\(s\) \['act_scale'\]"):
        NormalizationStats.from_dict(data)
    data = stats.to_dict()
    data["obs_shift"] = [float("nan"), 0.0]
    with pytest.raises(StatisticsError, match="obs_shift has non-finite"):
        NormalizationStats.from_dict(data)
    with pytest.raises(StatisticsError, match="expected observations"):
        NormalizationStats.fit(np.zeros((0, 2)), np.zeros((0, 2, 1)))
