"""Per-episode outcomes and a hash of every command sent, for the shipped models in eval-sim.

    python scripts/outcome_fingerprint.py --episodes 50 --seed 0 --json out/fingerprint.json

Runs each shipped model (default settings, as ``flow-policy eval-sim``) on the same episode seeds
and records, per episode, success, failure reason and the SHA-256 of the clamped command sequence
(float64 bytes). Two runs of this script on two commits say whether a refactor changed behaviour:
identical hashes mean bit-identical commands.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: shipped model -> task
MODELS = {
    "iiwa_reach": "reach",
    "iiwa_reach_2step": "reach",
    "iiwa_reach_around": "reach_around",
    "iiwa_reach_around_2step": "reach_around",
    "iiwa_reach_around_rtc": "reach_around",
    "iiwa_reach_rtc": "reach",
}


def fingerprint(model: str, task: str, episodes: int, seed: int) -> list[dict]:
    from flow_policy_ros.runtime.chunking import resolve_chunking
    from flow_policy_ros.sim.closed_loop import LoopConfig, eval_episode_seeds, run_episodes

    try:  # after the architecture change: one factory
        from flow_policy_ros.runtime.policy import load_policy

        policy = load_policy(REPO / "models" / f"{model}.onnx", seed=seed)
    except ImportError:
        from flow_policy_ros.runtime.onnx_policy import OnnxPolicy

        policy = OnnxPolicy(REPO / "models" / f"{model}.onnx", seed=seed)
    config = LoopConfig(chunking=resolve_chunking("auto", policy.metadata.rtc))
    results = run_episodes(policy, task, eval_episode_seeds(seed, episodes), config)
    return [{"seed": int(r.seed), "success": bool(r.success), "failure": r.failure,
             "commands_sha256": hashlib.sha256(np.ascontiguousarray(r.commands, dtype=np.float64).tobytes()).hexdigest(),
             "n_commands": int(len(r.commands))} for r in results]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    out = {}
    for model in args.models:
        out[model] = fingerprint(model, MODELS[model], args.episodes, args.seed)
        print(f"{model}: {sum(e['success'] for e in out[model])}/{len(out[model])} successes", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
