"""Latency against solver steps N: a camera model's encoder must add a constant, not a per-step cost.

    python scripts/encoder_step_slope.py --checkpoints runs/reach_object/last.pt runs/reach_object_oracle/last.pt \\
        --steps 2 5 10 20 --json runs/encoder_step_slope.json

Exports each checkpoint with every N (Euler) into a temporary directory, counts the graph's Conv
nodes, and times ONNX Runtime (CPU, 1 thread, batch 1) over ``--calls`` calls per N, interleaved
round-robin so load drifts of the shared machine hit every N alike. Fits p50 = a + b·N per model:
the slope b (ms per step) should be the same for the camera and the state-only model, the
intercept a holds the encoder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from flow_policy_ros.export.onnx_export import export_checkpoint
from flow_policy_ros.runtime.metadata import METADATA_KEY, PolicyMetadata


def feeds_for(path: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    meta = PolicyMetadata.from_json(next(p.value for p in model.metadata_props if p.key == METADATA_KEY))
    feeds = {"observation": rng.standard_normal((1, meta.obs_dim)).astype(np.float32) * 0.1,
             "noise": rng.standard_normal((1, meta.horizon, meta.action_dim)).astype(np.float32),
             "guidance_scale": np.array([1.0], np.float32)}
    for f in meta.observation.image_features:
        feeds[f"image_{f.camera}"] = rng.integers(0, 256, (1, *f.image_shape), dtype=np.uint8)
    return feeds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="+", type=Path, required=True)
    parser.add_argument("--steps", nargs="+", type=int, default=[2, 5, 10, 20])
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    report = []
    with tempfile.TemporaryDirectory() as tmp:
        for ckpt in args.checkpoints:
            sessions, convs = {}, {}
            for n in args.steps:
                path = Path(tmp) / f"{ckpt.parent.name}_n{n}.onnx"
                export_checkpoint(ckpt, path, steps=n)
                convs[n] = sum(node.op_type == "Conv" for node in onnx.load(str(path)).graph.node)
                sessions[n] = (ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]),
                               feeds_for(path, rng))
            times: dict[int, list[float]] = {n: [] for n in args.steps}
            for session, feeds in sessions.values():  # warm-up
                for _ in range(20):
                    session.run(None, feeds)
            for _ in range(args.calls):
                for n, (session, feeds) in sessions.items():
                    start = time.perf_counter()
                    session.run(None, feeds)
                    times[n].append((time.perf_counter() - start) * 1e3)
            p50 = {n: float(np.median(v)) for n, v in times.items()}
            slope, intercept = np.polyfit(list(p50), list(p50.values()), 1)
            row = {"checkpoint": str(ckpt), "conv_nodes": convs, "p50_ms": p50,
                   "slope_ms_per_step": float(slope), "intercept_ms": float(intercept)}
            report.append(row)
            print(f"{ckpt}: Conv nodes {convs}; p50 ms " + ", ".join(f"N={n}: {v:.3f}" for n, v in p50.items())
                  + f"; fit {intercept:.3f} + {slope:.4f}*N ms", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
