"""Does a camera policy need its frames on time? In-process evaluation with every camera frame's
pixels delivered ``--lag`` camera periods late (issue 19; docs/camera.md, ``train.image_lag_frames``).

The frame keeps the stamp of the frame it replaces, so the controller's max-age pairing sees a
fresh frame and never holds: only what the image shows is late (the arm where it was 80 ms
earlier at 12.5 Hz; the cube does not move). On a robot a frame arrives after its exposure, and
sim_node needs ~10 ms to render one, so a decision can get the frame before the one of its tick.

    python scripts/camera_frame_lag.py --model models/iiwa_reach_object.onnx --episodes 30 --lag 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flow_policy_ros.runtime.onnx_policy import OnnxPolicy
from flow_policy_ros.sim import env as sim_env
from flow_policy_ros.sim.closed_loop import LoopConfig
from flow_policy_ros.sim.evaluate import evaluate


def lag_frames(lag: int) -> None:
    """Make every SimEnv deliver camera pixels ``lag`` frames late (stamps unchanged)."""
    observe, reset = sim_env.SimEnv.observe, sim_env.SimEnv.reset

    def lagged_observe(self: sim_env.SimEnv) -> sim_env.Observation:
        obs = observe(self)
        history = self.__dict__.setdefault("_frame_history", [])
        if obs.images and lag:
            stamp, frame = obs.images[self.camera.name]
            if not history or history[-1][0] != stamp:
                history.append((stamp, frame))
            if len(history) > lag:
                obs.images[self.camera.name] = (stamp, history[-1 - lag][1])
        return obs

    def fresh_reset(self: sim_env.SimEnv, *args: object, **kwargs: object) -> object:
        self.__dict__["_frame_history"] = []
        return reset(self, *args, **kwargs)

    sim_env.SimEnv.observe = lagged_observe  # type: ignore[method-assign]
    sim_env.SimEnv.reset = fresh_reset  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (episode seeds as eval-sim's)")
    parser.add_argument("--lag", type=int, default=1, help="camera frames late (0: on time)")
    parser.add_argument("--task", default="reach_object")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    lag_frames(args.lag)
    report, _ = evaluate(OnnxPolicy(args.model, seed=0), args.task, args.episodes, seed=args.seed,
                         config=LoopConfig(), progress=False)
    result = {"model": Path(args.model).name, "lag_frames": args.lag, "episodes": report["episodes"],
              "successes": report["successes"], "failures": report["failures"]}
    print(f"{result['model']}: frames {args.lag} camera period(s) late: {report['successes']}/{report['episodes']} "
          f"successes, failures {report['failures']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
