#!/usr/bin/env python3
"""Cost and identity of the density output (issue 24 items 7 and 8), in ONE run.

    python scripts/density_cost.py --with models/iiwa_reach.onnx --without runs/ship/iiwa_reach_plain.onnx

Both models are loaded as the node loads them (``load_policy``: CPU provider, one intra-op
thread) and timed alternately, ``--blocks`` blocks of ``--calls`` batch-1 ``predict`` calls each
(interleaving cancels the drift of a shared machine), so the two p50s come from the same minutes.
Then the actions of both are compared on ``--check`` random observations around the training range
with random noise (camera models: and random frames): bit-identical is required (the density must
not change the policy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with", dest="with_density", type=Path, required=True, help="model with the density output")
    parser.add_argument("--without", type=Path, required=True, help="the same policy without it")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--check", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from flow_policy_ros.runtime.policy import load_policy

    models = {"with": load_policy(args.with_density, providers=["CPUExecutionProvider"]),
              "without": load_policy(args.without, providers=["CPUExecutionProvider"])}
    meta = models["with"].metadata
    if meta.density is None or models["without"].metadata.density is not None:
        raise SystemExit("--with needs a density in its metadata, --without none")
    rng = np.random.default_rng(0)
    low, high = meta.observation_range.low, meta.observation_range.high
    obs = rng.uniform(low, high, size=(args.calls, meta.obs_dim)).astype(np.float32)
    noise = rng.standard_normal((args.calls, meta.horizon, meta.action_dim)).astype(np.float32)
    features = meta.observation.image_features  # camera models: random uint8 frames (same graph cost)
    frames = {f.name: rng.integers(0, 256, size=(args.calls, *f.image_shape), dtype=np.uint8) for f in features}

    def images(rows) -> dict | None:
        return {name: f[rows] for name, f in frames.items()} if frames else None

    times: dict[str, list[float]] = {"with": [], "without": []}
    for name in models:  # warm-up
        for i in range(100):
            models[name].predict(obs[i % args.calls], noise[i % args.calls], images=images(i % args.calls))
    for block in range(args.blocks):
        for name in (("with", "without") if block % 2 == 0 else ("without", "with")):
            policy = models[name]
            for i in range(args.calls):
                start = time.perf_counter_ns()
                policy.predict(obs[i], noise[i], images=images(i))
                times[name].append((time.perf_counter_ns() - start) * 1e-6)
    stats = {name: {"p50_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)), "calls": len(t)}
             for name, t in times.items()}
    ratio = stats["with"]["p50_ms"] / stats["without"]["p50_ms"]
    check_obs = rng.uniform(low - 0.2 * (high - low), high + 0.2 * (high - low), size=(args.check, meta.obs_dim)).astype(np.float32)
    check_noise = rng.standard_normal((args.check, meta.horizon, meta.action_dim)).astype(np.float32)
    check_frames = {f.name: rng.integers(0, 256, size=(args.check, *f.image_shape), dtype=np.uint8) for f in features}
    a = models["with"].predict(check_obs, check_noise, images=check_frames or None)
    b = models["without"].predict(check_obs, check_noise, images=check_frames or None)
    identical = bool(np.array_equal(a, b))
    out = {"with": str(args.with_density), "without": str(args.without), **stats, "p50_ratio": ratio,
           "density": f"{meta.density.solver}x{meta.density.steps}", "actions_bit_identical": identical,
           "checked": args.check, "max_abs_action_diff": float(np.max(np.abs(a - b)))}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
