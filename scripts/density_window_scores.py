#!/usr/bin/env python3
"""Where in the episodes an exported density's low scores fall (docs/density_shield.md, camera model).

    python scripts/density_window_scores.py --model models/iiwa_reach_object.onnx \\
        --checkpoint models/iiwa_reach_object.pt --data data/calib_reach_object

Scores every window of ``--data`` with the graph itself (``density_export.graph_scores``, frames fed
for a camera model) and prints p50 / p1 / min of the scores by time in the episode (window index x
the control period), and the windows where the lowest episode minima fall.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BINS_S = (0.0, 0.1, 0.5, 1.5, 3.0, 6.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="ONNX model with a density")
    parser.add_argument("--checkpoint", type=Path, required=True, help="its checkpoint (observation spec, data config)")
    parser.add_argument("--data", type=Path, required=True, help="held-out episodes (directory of bags or windows .npz)")
    parser.add_argument("--lowest", type=int, default=8, help="episode minima to list")
    args = parser.parse_args()

    import onnxruntime as ort

    from flow_policy_ros.export.density_export import graph_scores, window_images
    from flow_policy_ros.policy.checkpoint import load_checkpoint
    from flow_policy_ros.policy.dataset import load_training_data

    ckpt = load_checkpoint(args.checkpoint)
    windows = load_training_data(args.data, ckpt.config.policy, ckpt.config.data, progress=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
    scores = graph_scores(session, windows.observations, images=window_images(windows))
    episodes = np.unique(windows.episode_index)
    position = np.zeros(len(scores), np.int64)
    for e in episodes:
        rows = np.flatnonzero(windows.episode_index == e)
        position[rows] = np.arange(len(rows))
    seconds = position * ckpt.config.policy.control_period_s
    for lo, hi in zip(BINS_S[:-1], BINS_S[1:]):
        part = scores[(seconds >= lo) & (seconds < hi)]
        if len(part):
            print(f"{lo:.1f}-{hi:.1f} s: p50 {np.median(part):.1f}  p1 {np.percentile(part, 1):.1f}  min {part.min():.1f} nat "
                  f"({len(part)} windows)")
    minima = sorted((float(scores[windows.episode_index == e].min()),
                     int(position[windows.episode_index == e][np.argmin(scores[windows.episode_index == e])])) for e in episodes)
    print(f"lowest {args.lowest} episode minima (nat, window index):", [(round(s, 1), i) for s, i in minima[:args.lowest]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
