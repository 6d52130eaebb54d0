#!/usr/bin/env python3
"""Replay throughput benchmark: decisions/s of ``flow-policy replay`` on a synthetic long recording.

Synthesizes ``--minutes`` of joint_states at 100 Hz (±2 ms stamp jitter, shuffled joint order),
position commands at 50 Hz and one goal (10 min → 60000 + 30000 messages → 30000 decisions),
then runs the replay core (read, observations, batched seeded inference, metrics) and reports
the time of each stage and decisions/s, inference-only and end-to-end. Prints one summary
line and writes JSON with ``--json``.

Without ``--model`` a policy of the default PolicyConfig size (hidden 192, 3 layers, H 16,
N 10 Euler steps with CFG) is exported with untrained seeded weights via test/model_factory.py
(needs torch; speed does not depend on training).

    .venv/bin/python scripts/bench_replay.py --json bench_replay.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flow_policy_ros.data import bag as bagio  # noqa: E402
from flow_policy_ros.data.replay import replay_bag  # noqa: E402
from flow_policy_ros.policy.config import IIWA_JOINT_NAMES  # noqa: E402
from flow_policy_ros.runtime.onnx_policy import OnnxPolicy  # noqa: E402

EPOCH = 1_700_000_000_000_000_000


def synthesize(path: Path, minutes: float, storage: str = "mcap", seed: int = 0) -> dict[str, int]:
    """Write a recording: joint_states 100 Hz, commands 50 Hz, one goal; returns message counts."""
    rng = np.random.default_rng(seed)
    names = list(IIWA_JOINT_NAMES)
    n_js, n_cmd = int(minutes * 60 * 100), int(minutes * 60 * 50)
    t_js = EPOCH + 10_000_000 * np.arange(n_js) + rng.integers(-2_000_000, 2_000_000, n_js)
    t_js[0] = EPOCH - 5_000_000
    t_cmd = EPOCH + 20_000_000 * np.arange(n_cmd)
    phase = rng.uniform(0, 2 * np.pi, 7)

    def q(t: np.ndarray) -> np.ndarray:
        return 0.8 * np.sin(0.5 * (t - EPOCH)[:, None] * 1e-9 + phase)

    pos_js, pos_cmd = q(t_js), q(t_cmd + 20_000_000)
    vel_js = 0.4 * np.cos(0.5 * (t_js - EPOCH)[:, None] * 1e-9 + phase)
    with bagio.BagWriter(path, storage) as writer:
        writer.write("/goal", bagio.POINT_STAMPED, bagio.point_stamped_msg(EPOCH - 10_000_000, np.array([0.5, 0.1, 0.4])),
                     EPOCH - 10_000_000)
        j = 0
        for i, t in enumerate(t_js):  # interleave in log-time order, as a recorder would
            while j < n_cmd and t_cmd[j] <= t:
                writer.write("/commands", bagio.FLOAT64_MULTI_ARRAY, bagio.float64_multi_array_msg(pos_cmd[j]), int(t_cmd[j]))
                j += 1
            order = rng.permutation(7)
            writer.write("/joint_states", bagio.JOINT_STATE,
                         bagio.joint_state_msg(int(t), [names[k] for k in order], pos_js[i, order], vel_js[i, order]), int(t))
    return {"joint_states": n_js, "commands": j, "goal": 1}


def default_model(directory: Path) -> Path:
    sys.path.insert(0, str(REPO / "test"))
    from model_factory import make_tiny_model

    return make_tiny_model(directory / "bench_policy.onnx", seed=0, hidden_dim=192, num_layers=3, horizon=16, solver_steps=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="ONNX policy (default: export a default-size untrained one)")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the synthetic recording (min)")
    parser.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_replay_") as tmp:
        tmp_dir = Path(tmp)
        model = args.model or default_model(tmp_dir)
        start = time.perf_counter()
        counts = synthesize(tmp_dir / "recording", args.minutes, args.storage)
        synth_s = time.perf_counter() - start
        policy = OnnxPolicy(model, providers=["CPUExecutionProvider"], intra_op_num_threads=args.threads)
        rep = replay_bag(tmp_dir / "recording", policy, seed=0, batch_size=args.batch_size).report
    meta = policy.metadata
    result = {
        "minutes": args.minutes, "storage": args.storage, "messages": counts, "decisions": rep["decisions"],
        "model": {"path": str(args.model) if args.model else "default-size untrained (model_factory)",
                  "horizon": meta.horizon, "solver_steps": meta.solver_steps, "obs_dim": meta.obs_dim},
        "provider": policy.active_provider, "threads": args.threads, "batch_size": args.batch_size,
        "synthesize_s": synth_s, "timing_s": rep["timing_s"], "decisions_per_s": rep["decisions_per_s"],
        "latency_ms": rep["latency_ms"],
    }
    print(f"bench_replay: {rep['decisions']} decisions ({args.minutes:g} min, {args.storage}); "
          f"read {rep['timing_s']['read']:.2f} s, observations {rep['timing_s']['observations']:.2f} s, "
          f"inference {rep['timing_s']['inference']:.2f} s -> {rep['decisions_per_s']['inference']:.0f} decisions/s "
          f"inference, {rep['decisions_per_s']['end_to_end']:.0f} decisions/s end to end "
          f"({policy.active_provider}, {args.threads} thread(s), batch {args.batch_size})")
    if args.json:
        tmp_json = args.json.with_name(args.json.name + ".tmp")
        tmp_json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        tmp_json.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
