"""Run scripted-expert episodes in :class:`~flow_policy_ros.sim.env.SimEnv` and record them."""

from __future__ import annotations

from flow_policy_ros.data.recording import EpisodeRecording
from flow_policy_ros.sim.env import SimEnv
from flow_policy_ros.sim.experts import ScriptedExpert


def run_expert_episode(
    task: str,
    seed: int,
    env: SimEnv | None = None,
    expert: ScriptedExpert | None = None,
) -> EpisodeRecording:
    """Episode ``seed`` of ``task`` driven by the scripted expert, recorded until it is done.

    ``env`` and ``expert`` may be passed in to reuse their PyBullet clients across episodes
    (results do not depend on it); otherwise they are created and closed here. The metadata
    adds ``source='scripted_expert'`` and ``expert_motion_s`` (duration of the planned motion
    before the hold).
    """
    own_env, own_expert = env is None, expert is None
    env = env if env is not None else SimEnv(record=True)
    expert = expert if expert is not None else ScriptedExpert()
    try:
        if not env.record:
            raise ValueError("run_expert_episode needs an env created with record=True")
        spec = env.reset(task, seed)
        trajectory = expert.plan(spec)
        while not env.done:
            env.step(expert.command(env.next_tick_time_s))
        return env.recording({"source": "scripted_expert", "expert_motion_s": trajectory.duration_s})
    finally:
        if own_env:
            env.close()
        if own_expert:
            expert.close()
