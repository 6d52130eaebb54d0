"""IK/FK helper: round trips, determinism, errors that name the target."""

from __future__ import annotations

import numpy as np
import pytest

from flow_policy_ros.sim.kinematics import HOME_Q, IiwaKinematics, IkError
from flow_policy_ros.sim.tasks import NOMINAL_START_EE


@pytest.fixture(scope="module")
def kinematics():
    with IiwaKinematics() as kin:
        yield kin


def test_home_pose_puts_the_ee_at_the_nominal_start(kinematics: IiwaKinematics) -> None:
    assert np.allclose(kinematics.forward(HOME_Q), NOMINAL_START_EE, atol=1e-3)


@pytest.mark.parametrize("target", [(0.45, -0.3, 0.25), (0.7, 0.3, 0.55), (0.78, 0.1, 0.5)])
def test_inverse_reaches_targets_and_is_deterministic(kinematics: IiwaKinematics, target) -> None:
    q = kinematics.inverse(target)
    assert np.linalg.norm(kinematics.forward(q) - np.asarray(target)) < 1e-3
    kinematics.forward(np.zeros(7))  # IK must not depend on the current pose of the copy
    assert np.array_equal(kinematics.inverse(target), q)


def test_unreachable_target_raises_naming_it(kinematics: IiwaKinematics) -> None:
    with pytest.raises(IkError, match=r"\[2\.0, 0\.0, 0\.5\]"):
        kinematics.inverse((2.0, 0.0, 0.5))
