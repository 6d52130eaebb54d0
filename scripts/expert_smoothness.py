"""Expert reference for seam_smoothness: the scripted expert on eval-sim's held-out episode seeds.

    python scripts/expert_smoothness.py --task reach --episodes 200 --seed 0 --json out/expert_reach.json

Same episodes (``eval_episode_seeds``), same clamp (``CommandLimiter`` on the iiwa limits, relative
to the measured position for the first command), same metric (``sim.evaluate.seam_smoothness``)
with seams every ``--replan-every`` ticks (4, eval-sim's default), so the numbers compare 1:1 with
``flow-policy eval-sim``'s report.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from flow_policy_ros.policy.config import IIWA_JOINT_NAMES, JointLimits
from flow_policy_ros.runtime.chunking import DEFAULT_REPLAN_EVERY
from flow_policy_ros.runtime.safety import CommandLimiter, SafetyLimits
from flow_policy_ros.sim.closed_loop import EpisodeResult, eval_episode_seeds
from flow_policy_ros.sim.env import SimEnv
from flow_policy_ros.sim.evaluate import seam_smoothness
from flow_policy_ros.sim.experts import ScriptedExpert
from flow_policy_ros.sim.tasks import sample_episode


def expert_episode(env: SimEnv, expert: ScriptedExpert, limits: SafetyLimits, task: str, seed: int, replan_every: int) -> EpisodeResult:
    spec = sample_episode(task, seed)
    env.reset_to(spec)
    expert.plan(spec)
    limiter = CommandLimiter(limits, env.control_period_s)
    commands, tick = [], 0
    while not env.done:
        obs = env.observe()
        command = limiter.limit(expert.command(env.next_tick_time_s), obs.positions)
        commands.append(command)
        env.step(command)
        tick += 1
    status = env.status()
    return EpisodeResult(
        seed=seed, success=status.success, failure=None, route=status.route, reached_time_s=status.reached_time_s,
        final_distance_m=status.final_distance_m, goal=np.asarray(spec.goal), obstacle=None, ee_path=np.zeros((0, 3)),
        commands=np.asarray(commands), chunk_ticks=list(range(0, tick, replan_every)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replan-every", type=int, default=DEFAULT_REPLAN_EVERY)
    parser.add_argument("--json")
    args = parser.parse_args()
    limits = SafetyLimits.from_joint_limits(JointLimits(), 1.0)
    assert tuple(IIWA_JOINT_NAMES) == tuple(f"lbr_iiwa_joint_{i}" for i in range(1, 8))
    env, expert = SimEnv(record=False), ScriptedExpert()
    period_s = env.control_period_s
    try:
        results = [expert_episode(env, expert, limits, args.task, s, args.replan_every)
                   for s in eval_episode_seeds(args.seed, args.episodes)]
    finally:
        env.close()
        expert.close()
    smooth = seam_smoothness(results, period_s)
    report = {"task": args.task, "episodes": len(results), "successes": sum(r.success for r in results), "seam_smoothness": smooth}
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
