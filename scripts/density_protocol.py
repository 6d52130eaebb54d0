#!/usr/bin/env python3
"""The observation-density shield protocol (docs/density_shield.md, issue 24 item 5), reproducibly.

    python scripts/density_protocol.py --model models/iiwa_reach.onnx --task reach \\
        --checkpoint models/iiwa_reach.pt --calibration data/calib_reach --out runs/protocol_reach

1. In distribution: ``--id-episodes`` eval-sim episodes (seeds ``eval_episode_seeds(--seed, N)``, the
   model cards' held-out seeds) with the shipped guard (``density_hold_after`` = ``--hold-after``):
   episodes with any density hold, successes with and without it.
2. Shifts (``--shift-episodes`` each, seeds ``eval_episode_seeds(--seed + 1 + i, N)`` for shift i), the
   density guard observing only (``density_hold_after`` = 100: no density hold changes the run, the
   range guard acts as shipped), every decision's observation and score recorded:
   * ``start``: start pose drawn uniformly inside every joint's training range (5% inside its edges),
     outside the demonstrations' start set (home +- 0.05 rad per joint; redrawn if inside it);
   * ``offset``: one joint's reading (uniform joint) off by a constant +-U(0.1, 0.4) rad all episode;
   * ``stuck``: one joint's reading frozen at its value at 0.3 s while the arm moves on;
   * ``camera`` (camera models): the camera moved, per episode: its eye 3 cm from the training pose in a
     uniformly random direction, its view axis panned and tilted by +-U(2, 4) degrees each (random signs);
   * ``occlusion`` (camera models): a grey visual-only box (8 cm cube) on the line from the object's centre
     to the camera eye, 35% of the way to the eye: the object is hidden from the camera all episode (the
     arm, the table and the distractor stay in view; the box has no physics);
   * ``goal`` (with ``--goal-hole``): goals inside a box-shaped hole of the goal region that the
     DENSITY was trained without (``--goal-hole`` also restricts the in-distribution episodes to
     goals outside it; scripts/density_goal_hole.py builds that density). The shipped policy itself
     was trained on the whole box, so this measures detection (AUROC) only.
   The shield's hold in a shifted episode is the first decision that completes k = ``--hold-after``
   scores in a row below the threshold: up to that decision the shielded run is the same run (the
   density changes no action), so this is where the shipped node would hold.
3. Per shift: AUROC (shifted vs in-distribution episodes) of the episode's density score (minimum
   over its decisions; lower = more anomalous) and of the range guard's (maximum ``ood_score`` over
   its decisions); failing shifted episodes (without the density hold) and the fraction the density
   guard (and either guard) held before the failure: an episode ends at its contact or time limit,
   so a hold at any decision of a failing episode came before the failure.
4. Solvers (``--checkpoint``/``--calibration``): the same recorded observations scored in PyTorch by
   other solvers/steps, each with its own conformal threshold on the calibration episodes: AUROC and
   held-before-failure per solver, to choose the shipped step count by separation.

Writes ``--out``/protocol.json (and decisions.npz). CPU-heavy: run under ``flock``; one torch thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))  # camera_robustness (the camera pose rotation)

SHIFTS = ("start", "offset", "stuck", "goal", "camera", "occlusion")
CAMERA_SHIFTS = ("camera", "occlusion")
CAMERA_EYE_MOVE_M = 0.03
CAMERA_TURN_DEG = (2.0, 4.0)
OCCLUDER_HALF_M = 0.04
OCCLUDER_RGBA = (0.5, 0.5, 0.5, 1.0)
OCCLUDER_FRACTION = 0.35  # of the way from the object's centre to the camera eye
OBSERVE_ONLY = 100  # density_hold_after: the guard records, never holds within an episode
STUCK_AT_S = 0.3
OFFSET_RANGE_RAD = (0.1, 0.4)
SOLVER_GRID = (("rk4", 1), ("midpoint", 2), ("rk4", 2), ("rk4", 4), ("rk4", 8))


class RecordingPolicy:
    """A ChunkPolicy that records every decision's observation and score (passes everything through)."""

    def __init__(self, policy) -> None:
        self._policy = policy
        self.metadata, self.active_provider, self.fallback_reason = policy.metadata, policy.active_provider, policy.fallback_reason
        self.observations: list[np.ndarray] = []

    @property
    def last_log_likelihood(self):
        return self._policy.last_log_likelihood

    def predict(self, observation, **kwargs):
        self.observations.append(np.asarray(observation, dtype=np.float32).copy())
        return self._policy.predict(observation, **kwargs)

    def sample_noise(self, batch=None):
        return self._policy.sample_noise(batch)

    def reseed(self, seed: int) -> None:
        self._policy.reseed(seed)

    def take(self) -> np.ndarray:
        out, self.observations = np.array(self.observations), []
        return out


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores higher than a negative) + 0.5 P(tie) (Mann-Whitney), higher = more anomalous."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(greater + 0.5 * ties)


def first_hold(scores: np.ndarray, threshold: float, k: int) -> int | None:
    """Index of the decision completing k scores in a row below ``threshold`` (None: never)."""
    run = 0
    for i, s in enumerate(scores):
        run = run + 1 if (not np.isfinite(s) or s < threshold) else 0
        if run >= k:
            return i
    return None


def corrupt(shift: str, rng: np.random.Generator):
    """(observe wrapper factory, description) of a sensor shift, drawn from ``rng``."""
    joint = int(rng.integers(7))
    if shift == "offset":
        delta = float(rng.uniform(*OFFSET_RANGE_RAD) * rng.choice([-1.0, 1.0]))

        def change(obs, state):
            positions = obs.positions.copy()
            positions[joint] += delta
            return dataclasses.replace(obs, positions=positions)

        return change, {"joint": joint, "offset_rad": delta}

    def stuck(obs, state):
        if obs.time_s >= STUCK_AT_S and "value" not in state:
            state["value"] = float(obs.positions[joint])
        if "value" not in state:
            return obs
        positions = obs.positions.copy()
        positions[joint] = state["value"]
        velocities = obs.velocities.copy()
        velocities[joint] = 0.0
        return dataclasses.replace(obs, positions=positions, velocities=velocities)

    return stuck, {"joint": joint, "stuck_at_s": STUCK_AT_S}


def shifted_start(spec, joint_range: tuple[np.ndarray, np.ndarray], rng: np.random.Generator):
    from flow_policy_ros.sim.kinematics import HOME_Q
    from flow_policy_ros.sim.tasks import START_NOISE_RAD

    low, high = joint_range
    margin = 0.05 * (high - low)
    while True:
        q = rng.uniform(low + margin, high - margin)
        if np.any(np.abs(q - np.asarray(HOME_Q)) > START_NOISE_RAD):
            return dataclasses.replace(spec, start_q=q), {"start_q": q.round(4).tolist()}


def moved_camera(base, rng: np.random.Generator):
    """(``base`` CameraSpec moved: eye 3 cm in a random direction, view axis panned and tilted by +-U(2, 4) deg), info)."""
    from camera_robustness import _rotate

    direction = rng.normal(size=3)
    eye = np.asarray(base.eye) + CAMERA_EYE_MOVE_M * direction / np.linalg.norm(direction)
    pan, tilt = np.radians(rng.uniform(*CAMERA_TURN_DEG, 2) * rng.choice([-1.0, 1.0], 2))
    view = np.asarray(base.target) - np.asarray(base.eye)
    view = _rotate(view, np.array([0.0, 0.0, 1.0]), pan)
    view = _rotate(view, np.cross(view, np.asarray(base.up)), tilt)
    camera = dataclasses.replace(base, eye=tuple(eye), target=tuple(eye + view))
    return camera, {"camera_eye": eye.round(4).tolist(), "pan_deg": float(np.degrees(pan)), "tilt_deg": float(np.degrees(tilt))}


def occluded(spec, eye: np.ndarray):
    """(``spec`` with a grey box between its object and the camera eye, info)."""
    from flow_policy_ros.sim.arm import VisualObject

    target = np.asarray(spec.goal, dtype=np.float64)
    center = target + OCCLUDER_FRACTION * (np.asarray(eye) - target)
    box = VisualObject("occluder", tuple(center), (OCCLUDER_HALF_M,) * 3, OCCLUDER_RGBA)
    return dataclasses.replace(spec, visuals=spec.visuals + (box,)), {"occluder_center": center.round(4).tolist()}


def in_hole(goal: np.ndarray, hole) -> bool:
    box = np.asarray(hole).reshape(3, 2)
    return bool(np.all((goal >= box[:, 0]) & (goal <= box[:, 1])))


def episode_specs(task: str, seed: int, count: int, hole, inside: bool) -> list:
    """``count`` episodes of ``eval_episode_seeds(seed, ...)`` in order; with a ``hole``, only those
    whose goal is inside it (``inside``) or outside it."""
    from flow_policy_ros.sim.closed_loop import eval_episode_seeds
    from flow_policy_ros.sim.tasks import sample_episode

    specs = []
    for s in eval_episode_seeds(seed, 10_000):
        spec = sample_episode(task, s)
        if hole is None or in_hole(spec.goal, hole) == inside:
            specs.append(spec)
        if len(specs) == count:
            return specs
    raise SystemExit(f"fewer than {count} episodes with goals {'inside' if inside else 'outside'} the hole")


def run(loop, recorder: RecordingPolicy, specs, changes, cameras=None) -> list[dict]:
    """Run the episodes; each entry: result fields + decisions' observations and scores. ``cameras``: per
    episode the CameraSpec to render with (None: the loop's own)."""
    rows = []
    original, base_camera = loop.env.observe, loop.env.camera
    for i, (spec, (change, info)) in enumerate(zip(specs, changes)):
        state: dict = {}
        loop.env.observe = original if change is None else (lambda c=change, s=state: c(original(), s))
        loop.env.camera = base_camera if cameras is None or cameras[i] is None else cameras[i]
        result = loop.run_spec(spec)
        rows.append({"seed": spec.seed, "success": bool(result.success), "failure": result.failure,
                     "density_holds": result.density_holds, "first_density_hold_tick": result.first_density_hold_tick,
                     "ood_holds": result.ood_holds, "scores": list(map(float, result.density_scores)),
                     "observations": recorder.take(), **info})
    loop.env.observe, loop.env.camera = original, base_camera
    return rows


def range_scores(rows: list[dict], obs_range) -> np.ndarray:
    """Max ood_score over an episode's decisions; +inf for an episode the range guard held before any
    decision (no inference was ever made on it)."""
    from flow_policy_ros.runtime.ood import ood_score

    return np.array([max((ood_score(o, obs_range).value for o in r["observations"]), default=np.inf if r["ood_holds"] else 0.0)
                     for r in rows])


def episode_min(scores: list[float]) -> float:
    """An episode's density score; NaN when it had no scored decision (the range guard held first)."""
    return min(scores) if scores else float("nan")


def _episode_entry(row: dict) -> dict:
    """A recorded episode without its observations and scores (what the JSON keeps per episode)."""
    return {k: v for k, v in row.items() if k not in ("observations", "scores")}


def solver_table(rows_id, shift_rows, checkpoint: Path, calibration: Path, alpha: float, k: int) -> dict:
    """Per solver/steps: threshold on the calibration episodes, AUROC and held-before-failure per shift."""
    import torch

    from flow_policy_ros.policy.checkpoint import load_checkpoint
    from flow_policy_ros.policy.dataset import load_training_data
    from flow_policy_ros.policy.density_training import conformal_threshold, density_from_checkpoint, episode_minima

    ckpt = load_checkpoint(checkpoint)
    density = density_from_checkpoint(ckpt)
    windows = load_training_data(calibration, ckpt.config.policy, ckpt.config.data, progress=False)
    table = {}
    for solver, steps in SOLVER_GRID:
        def score(obs: np.ndarray, steps: int = steps, solver: str = solver) -> np.ndarray:
            with torch.no_grad():
                return density.log_prob(torch.tensor(np.asarray(obs, np.float32)), steps, solver).double().numpy()

        threshold, _ = conformal_threshold(episode_minima(score(windows.observations), windows.episode_index), alpha)
        id_scores = [score(r["observations"]) if len(r["observations"]) else np.zeros(0) for r in rows_id]
        id_min = np.array([s.min() if len(s) else np.nan for s in id_scores])
        id_min = id_min[np.isfinite(id_min)]
        entry = {"threshold": threshold,
                 "id_episodes_held": int(sum(first_hold(s, threshold, k) is not None for s in id_scores))}
        for shift, rows in shift_rows.items():
            scores = [score(r["observations"]) if len(r["observations"]) else np.zeros(0) for r in rows]
            failing = [i for i, r in enumerate(rows) if not r["success"]]
            entry[shift] = {
                "auroc": auroc(-np.array([s.min() for s in scores if len(s)]), -id_min),
                "failing_held": int(sum(first_hold(scores[i], threshold, k) is not None for i in failing)),
                "failing": len(failing),
            }
        table[f"{solver}x{steps}"] = entry
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="ONNX model with a density")
    parser.add_argument("--task", required=True)
    parser.add_argument("--checkpoint", type=Path, help="its checkpoint (with the density): the solver table")
    parser.add_argument("--calibration", type=Path, help="the held-out calibration episodes (for the solver table)")
    parser.add_argument("--id-episodes", type=int, default=200)
    parser.add_argument("--shift-episodes", type=int, default=50)
    parser.add_argument("--shifts", nargs="*", default=["start", "offset", "stuck"], choices=SHIFTS,
                        help="default start offset stuck ('goal' needs --goal-hole)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hold-after", type=int, default=2)
    parser.add_argument("--goal-hole", type=float, nargs=6, metavar=("X0", "X1", "Y0", "Y1", "Z0", "Z1"),
                        help="goal box (m) the density was trained without: in-distribution episodes have goals outside "
                             "it, shift 'goal' inside it")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from flow_policy_ros.runtime.chunking import resolve_chunking
    from flow_policy_ros.runtime.policy import load_policy
    from flow_policy_ros.sim.closed_loop import ClosedLoop, LoopConfig, eval_episode_seeds
    from flow_policy_ros.sim.tasks import sample_episode

    args.out.mkdir(parents=True, exist_ok=True)
    policy = load_policy(args.model, seed=args.seed)
    meta = policy.metadata
    if meta.density is None:
        raise SystemExit(f"{args.model}: no density in the metadata")
    threshold, k = meta.density.threshold, args.hold_after
    recorder = RecordingPolicy(policy)
    chunking = resolve_chunking("auto", meta.rtc)
    started = time.perf_counter()
    with ClosedLoop(recorder, LoopConfig(chunking=chunking, density_hold_after=k)) as loop:
        specs = episode_specs(args.task, args.seed, args.id_episodes, args.goal_hole, inside=False)
        rows_id = run(loop, recorder, specs, [(None, {})] * len(specs))
    print(f"in distribution: {sum(r['success'] for r in rows_id)}/{len(rows_id)} success, "
          f"{sum(bool(r['density_holds']) for r in rows_id)} episodes with a density hold "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    obs_range = meta.observation_range
    spec_range = obs_range.field(meta.observation, "joint_positions")
    joint_range = (np.asarray(spec_range.low), np.asarray(spec_range.high))
    id_density = np.array([episode_min(r["scores"]) for r in rows_id])
    id_range = range_scores(rows_id, obs_range)
    shift_rows, report = {}, {}
    with ClosedLoop(recorder, LoopConfig(chunking=chunking, density_hold_after=OBSERVE_ONLY)) as loop:
        for i, shift in enumerate(args.shifts):
            rng = np.random.default_rng([args.seed, 24, i])
            if shift == "goal":
                if args.goal_hole is None:
                    raise SystemExit("shift 'goal' needs --goal-hole")
                seeds = [s.seed for s in episode_specs(args.task, args.seed + 1 + i, args.shift_episodes, args.goal_hole, True)]
            else:
                seeds = eval_episode_seeds(args.seed + 1 + i, args.shift_episodes)
            specs, changes, cameras = [], [], []
            if shift in CAMERA_SHIFTS and loop.env.camera is None:
                raise SystemExit(f"shift {shift!r} needs a camera model")
            for s in seeds:
                spec = sample_episode(args.task, s)
                camera = None
                if shift == "camera":
                    camera, info = moved_camera(loop.env.camera, rng)
                    changes.append((None, info))
                elif shift == "occlusion":
                    spec, info = occluded(spec, loop.env.camera.eye)
                    changes.append((None, info))
                elif shift == "goal":
                    changes.append((None, {"goal": spec.goal.round(4).tolist()}))
                elif shift == "start":
                    spec, info = shifted_start(spec, joint_range, rng)
                    changes.append((None, info))
                else:
                    changes.append(corrupt(shift, rng))
                specs.append(spec)
                cameras.append(camera)
            rows = run(loop, recorder, specs, changes, cameras)
            shift_rows[shift] = rows
            density = np.array([episode_min(r["scores"]) for r in rows])
            scored = np.isfinite(density)  # the density AUROC covers episodes with at least one decision
            holds = [first_hold(np.array(r["scores"]), threshold, k) for r in rows]
            failing = [j for j, r in enumerate(rows) if not r["success"]]
            range_held = [bool(rows[j]["ood_holds"]) for j in failing]
            report[shift] = {
                "episodes": len(rows), "successes": len(rows) - len(failing), "failing": len(failing),
                "auroc_density": auroc(-density[scored], -id_density[np.isfinite(id_density)]),
                "episodes_without_decision": int((~scored).sum()),
                "auroc_range": auroc(range_scores(rows, obs_range), id_range),
                "density_held_episodes": int(sum(h is not None for h in holds)),
                "failing_density_held": int(sum(holds[j] is not None for j in failing)),
                "failing_range_held": int(sum(range_held)),
                "failing_either_held": int(sum(holds[j] is not None or rows[j]["ood_holds"] > 0 for j in failing)),
            }
            print(f"{shift}: {report[shift]} ({time.perf_counter() - started:.0f} s)", flush=True)
            partial = {"in_distribution_episodes": [_episode_entry(r) for r in rows_id], "shifts": report,
                       "episodes": {s: [_episode_entry(r) for r in rs] for s, rs in shift_rows.items()}}
            (args.out / "partial.json").write_text(json.dumps(partial, default=float))  # a run cut short keeps these
    out = {
        "model": args.model.name, "task": args.task, "threshold": threshold, "hold_after": k,
        "calibration": meta.density.calibration, "solver": f"{meta.density.solver}x{meta.density.steps}",
        "in_distribution": {"episodes": len(rows_id), "successes": sum(r["success"] for r in rows_id),
                            "episodes_with_density_hold": sum(bool(r["density_holds"]) for r in rows_id),
                            "successes_of_held_episodes": sum(r["success"] for r in rows_id if r["density_holds"]),
                            "score_min_p1_p50": [float(np.nanmin(id_density)), float(np.nanpercentile(id_density, 1)),
                                                 float(np.nanmedian(id_density))]},
        "shifts": report,
        "seconds": time.perf_counter() - started,
    }
    # k sweep on the recorded graph scores (in distribution: the shielded run, exact up to its first hold)
    out["hold_after_sweep"] = {
        str(kk): {"id_episodes_held": sum(first_hold(np.array(r["scores"]), threshold, kk) is not None for r in rows_id),
                  **{s: sum(first_hold(np.array(r["scores"]), threshold, kk) is not None for r in rows if not r["success"])
                     for s, rows in shift_rows.items()}}
        for kk in (1, 2, 3, 4)}
    if args.checkpoint is not None and args.calibration is not None:
        out["solvers"] = solver_table(rows_id, shift_rows, args.checkpoint, args.calibration,
                                      meta.density.calibration["alpha"], k)
    strip = ("observations",)
    out["episodes"] = {"in_distribution": [{k2: v for k2, v in r.items() if k2 not in strip and k2 != "scores"} for r in rows_id],
                       **{s: [{k2: v for k2, v in r.items() if k2 not in strip and k2 != "scores"} for r in rows]
                          for s, rows in shift_rows.items()}}
    (args.out / "protocol.json").write_text(json.dumps(out, indent=1, default=float))
    print(json.dumps({k2: out[k2] for k2 in ("in_distribution", "shifts")}, indent=1, default=float))
    if "solvers" in out:
        print(json.dumps(out["solvers"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
