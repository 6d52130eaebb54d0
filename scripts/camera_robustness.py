"""Success of a camera policy under scene changes it never saw in training (issue 19, item 8).

    python scripts/camera_robustness.py --model models/iiwa_reach_object.onnx --episodes 100 \\
        --json runs/camera_robustness.json

Runs the in-process closed loop (``sim.closed_loop``, as ``flow-policy eval-sim``) on the same
held-out episode seeds (eval seed ``--seed``) under each condition:

- ``nominal``: the training camera and scene;
- ``pose_jitter``: per episode, the camera eye moved by a uniform offset in [-1, 1] cm on each
  axis and the view axis turned by uniform angles in [-2, 2] degrees about the world z axis (pan)
  and the camera's horizontal axis (tilt), drawn from the episode seed;
- ``lighting``: the light from the other side and lower (light_direction (-0.6, -0.5, 0.5)
  instead of (0.6, 0.3, 1.0)): shading and shadows move;
- ``distractor_colour``: the distractor cube green (0.15, 0.75, 0.2) instead of blue.

Prints a markdown table (success, 95 % Wilson interval, failures) and writes the JSON;
``--frames PNG`` also saves the first frame of the first episode under each condition side by side
(3x upscaled), to look at what the policy saw.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from flow_policy_ros.metrics import wilson_interval
from flow_policy_ros.runtime.policy import load_policy
from flow_policy_ros.runtime.settings import DEFAULT_SETTINGS
from flow_policy_ros.sim.camera import CameraSpec
from flow_policy_ros.sim.closed_loop import ClosedLoop, camera_for_model, eval_episode_seeds
from flow_policy_ros.sim.tasks import EpisodeSpec, sample_episode

TASK = "reach_object"
EYE_JITTER_M = 0.01
ANGLE_JITTER_DEG = 2.0
LIGHT_DIRECTION = (-0.6, -0.5, 0.5)
UNSEEN_DISTRACTOR_RGBA = (0.15, 0.75, 0.2, 1.0)
CONDITIONS = ("nominal", "pose_jitter", "lighting", "distractor_colour")


def _rotate(vector: np.ndarray, axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues rotation of ``vector`` (3,) about unit ``axis`` (3,) by ``angle_rad``."""
    axis = axis / np.linalg.norm(axis)
    return (vector * math.cos(angle_rad) + np.cross(axis, vector) * math.sin(angle_rad)
            + axis * np.dot(axis, vector) * (1.0 - math.cos(angle_rad)))


def jittered_camera(base: CameraSpec, seed: int) -> CameraSpec:
    """``base`` with its eye moved by up to ±1 cm per axis and its view axis panned and tilted by up to ±2°."""
    rng = np.random.default_rng([seed, 19])
    eye = np.asarray(base.eye) + rng.uniform(-EYE_JITTER_M, EYE_JITTER_M, 3)
    view = np.asarray(base.target) - np.asarray(base.eye)
    pan, tilt = np.radians(rng.uniform(-ANGLE_JITTER_DEG, ANGLE_JITTER_DEG, 2))
    view = _rotate(view, np.array([0.0, 0.0, 1.0]), pan)
    view = _rotate(view, np.cross(view, np.asarray(base.up)), tilt)
    return replace(base, eye=tuple(eye), target=tuple(eye + view))


def scene(condition: str, spec: EpisodeSpec) -> EpisodeSpec:
    if condition != "distractor_colour":
        return spec
    visuals = tuple(replace(v, rgba=UNSEEN_DISTRACTOR_RGBA) if v.name.startswith("distractor") else v for v in spec.visuals)
    return replace(spec, visuals=visuals)


def first_frame(policy, condition: str, seed: int) -> np.ndarray:
    """The (H, W, 3) frame the camera shows at the reset of episode ``seed`` under ``condition``."""
    from flow_policy_ros.sim.env import SimEnv

    base = camera_for_model(policy.metadata)
    camera = {"lighting": replace(base, light_direction=LIGHT_DIRECTION),
              "pose_jitter": jittered_camera(base, seed)}.get(condition, base)
    with SimEnv(record=False, camera=camera) as env:
        env.reset_to(scene(condition, sample_episode(TASK, seed)))
        return env.observe().images[camera.name][1]


def run_condition(model: Path, condition: str, seeds: list[int]) -> dict:
    policy = load_policy(model)
    base = camera_for_model(policy.metadata)
    camera = replace(base, light_direction=LIGHT_DIRECTION) if condition == "lighting" else base
    results = []
    with ClosedLoop(policy, DEFAULT_SETTINGS, camera) as loop:
        for seed in seeds:
            if condition == "pose_jitter":  # the env renders whatever camera it holds; same name and size
                loop.env.camera = camera_for_model(policy.metadata, jittered_camera(base, seed))
            results.append(loop.run_spec(scene(condition, sample_episode(TASK, seed))))
    successes = sum(r.success for r in results)
    lo, hi = wilson_interval(successes, len(results))
    failures: dict[str, int] = {}
    for r in results:
        if r.failure:
            failures[r.failure] = failures.get(r.failure, 0) + 1
    return {"condition": condition, "episodes": len(results), "successes": successes,
            "success_rate": successes / len(results), "success_ci95": [lo, hi], "failures": failures,
            "final_distance_m_median": float(np.median([r.final_distance_m for r in results]))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (episode seeds as eval-sim's)")
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--frames", type=Path, help="save the first frame under each condition here (PNG)")
    args = parser.parse_args()
    seeds = eval_episode_seeds(args.seed, args.episodes)
    rows = []
    for condition in args.conditions:
        row = run_condition(args.model, condition, seeds)
        rows.append(row)
        print(f"{condition}: {row['successes']}/{row['episodes']}", flush=True)
    print("\n| condition | success | 95% CI | failures | median final distance |")
    print("|---|---|---|---|---|")
    for row in rows:
        lo, hi = row["success_ci95"]
        print(f"| {row['condition']} | {row['successes']}/{row['episodes']} ({row['success_rate']:.0%}) | "
              f"{lo:.0%}-{hi:.0%} | {row['failures'] or '-'} | {row['final_distance_m_median'] * 100:.1f} cm |")
    if args.frames:
        from PIL import Image

        policy = load_policy(args.model)
        strip = np.concatenate([first_frame(policy, c, seeds[0]) for c in args.conditions], axis=1)
        Image.fromarray(np.kron(strip, np.ones((3, 3, 1), np.uint8))).save(args.frames)
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "seed": args.seed, "episodes": args.episodes,
                                         "eye_jitter_m": EYE_JITTER_M, "angle_jitter_deg": ANGLE_JITTER_DEG,
                                         "light_direction": LIGHT_DIRECTION,
                                         "unseen_distractor_rgba": UNSEEN_DISTRACTOR_RGBA, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
