"""The scripted expert as a chunk source: the reference every closed-loop evaluation compares to.

:class:`ExpertPolicy` has the interface the closed loop uses of an ``OnnxPolicy`` (``metadata``,
``predict``, ``reseed``) and serves the scripted expert's planned trajectory as action chunks: a
request at tick k holds the expert's targets for ticks k .. k+H-1 (the target reached one period
after each tick, as the expert commands it), in the model's action-joint order. So the expert
runs on the same episode seeds through the SAME controller (scheduler, velocity/limit clamp,
hold rules) as the policy, and its smoothness numbers compare 1:1 with the policy's.
"""

from __future__ import annotations

import numpy as np

from flow_policy_ros.contract import IIWA_JOINT_NAMES
from flow_policy_ros.runtime.metadata import PolicyMetadata
from flow_policy_ros.runtime.observation import values_by_name
from flow_policy_ros.sim.env import SimEnv
from flow_policy_ros.sim.experts import ScriptedExpert
from flow_policy_ros.sim.tasks import EpisodeSpec

REFERENCES: tuple[str, ...] = ("expert",)


class ExpertPolicy:
    """The scripted expert's plan served as (H, A) chunks with a model's shapes and joint order.

    Args:
        metadata: the evaluated model's metadata (H, A, control period, joints, limits).
    """

    def __init__(self, metadata: PolicyMetadata) -> None:
        self.metadata = metadata
        self.expert = ScriptedExpert()
        self.rtc = False
        self._env: SimEnv | None = None

    def reseed(self, seed: int) -> None:
        """The closed loop reseeds the policy's noise per episode; the expert draws no noise."""

    def begin_episode(self, spec: EpisodeSpec, env: SimEnv) -> None:
        """Plan the episode (called by the closed loop after the reset)."""
        self.expert.plan(spec)
        self._env = env

    def predict(self, observation: np.ndarray, guidance_scale: float | None = None, **_: object) -> np.ndarray:
        """(H, A) the expert's targets for the next H ticks (rad); the observation is not needed."""
        if self._env is None:
            raise RuntimeError("ExpertPolicy.predict before begin_episode")
        t = self._env.next_tick_time_s
        period = self.metadata.control_period_s
        rows = [self.expert.command(t + i * period) for i in range(self.metadata.horizon)]
        return np.stack([values_by_name(IIWA_JOINT_NAMES, row, self.metadata.action_joint_names) for row in rows])

    def close(self) -> None:
        self.expert.close()
