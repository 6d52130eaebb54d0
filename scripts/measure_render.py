"""Median CPU render time (ms) of the sim camera on the reach_object scene.

    PYTHONPATH=. python scripts/measure_render.py --frames 100 [--width 96 --height 96]

Renders ``--frames`` frames of episode 0 of reach_object (the arm moved by the scripted expert
between frames, so every frame differs) and prints the median and p90 wall time per frame and
the median CPU time of the rendering thread (less sensitive to other load on a shared machine).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from flow_policy_ros.sim.camera import CameraSpec
from flow_policy_ros.sim.env import SimEnv
from flow_policy_ros.sim.experts import ScriptedExpert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--width", type=int, default=CameraSpec.width)
    parser.add_argument("--height", type=int, default=CameraSpec.height)
    args = parser.parse_args()
    camera = CameraSpec(width=args.width, height=args.height)
    times_ms, cpu_ms = [], []
    with SimEnv(record=False) as env:
        expert = ScriptedExpert()
        try:
            expert.plan(env.reset("reach_object", 0))
            for _ in range(args.frames):
                if not env.done:
                    env.step(expert.command(env.next_tick_time_s))
                start, start_cpu = time.perf_counter(), time.thread_time()
                env.arm.render(camera)
                times_ms.append((time.perf_counter() - start) * 1e3)
                cpu_ms.append((time.thread_time() - start_cpu) * 1e3)
        finally:
            expert.close()
    print(f"{args.width}x{args.height}: wall median {np.median(times_ms):.2f} ms, p90 {np.percentile(times_ms, 90):.2f} ms; "
          f"CPU (thread time) median {np.median(cpu_ms):.2f} ms per frame over {args.frames} frames (ER_TINY_RENDERER)")


if __name__ == "__main__":
    main()
