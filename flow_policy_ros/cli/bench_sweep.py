"""``flow-policy bench --sweep``: solvers x steps x batch, ONNX Runtime vs PyTorch eager, one table.

For each (solver, steps) the checkpoint is exported with the same code as ``flow-policy export``
(:func:`~flow_policy_ros.export.onnx_export.export_checkpoint`: one unrolled graph, checker,
parity against PyTorch) into a temporary directory, and both engines are timed on the same
inputs at each batch size: ONNX Runtime (CPU provider, 1 intra-op thread, ``session.run``) and
the eager PyTorch sampler with the same weights and solver (1 thread). Per cell: ``calls``
timed calls after a short warm-up; p50/p99 of one call (ms) and chunks/s = batch / mean call
time. NFE = network evaluations per chunk (each one batched over both CFG branches).

Keep it short on a shared machine: the defaults (3 solvers x 4 step counts x 3 batches x 2
engines, 200 calls per cell) take about a minute here. Figures from one run compare with each
other; across runs on a busy 2-core machine they drift.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from flow_policy_ros.cli.timing import latency_stats

DEFAULT_STEPS: tuple[int, ...] = (1, 2, 5, 10)
DEFAULT_BATCHES: tuple[int, ...] = (1, 8, 64)
DEFAULT_CALLS = 200
WARMUP_CALLS = 20


def _cell(fn: Any, batch: int, calls: int) -> dict[str, float]:
    stats = latency_stats(fn, calls, warmup=WARMUP_CALLS)
    return {"p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"], "chunks_per_s": batch / (stats["mean_ms"] * 1e-3)}


def _time_engines(ort_policy: Any, eager: Any, obs: np.ndarray, noise: np.ndarray,
                  calls: int) -> tuple[dict[str, float], dict[str, float]]:
    """(ONNX Runtime cell, eager cell) for one batch: observation (B, obs_dim), noise (B, H, A), w = 1."""
    import torch

    batch = obs.shape[0]
    w = np.ones(1, np.float32)
    feeds = {"observation": obs, "noise": noise, "guidance_scale": w}
    if ort_policy.metadata.rtc:  # a real-time chunking graph also takes a (here empty) prefix
        feeds.update(prefix_actions=np.zeros_like(noise), prefix_length=np.zeros(batch, np.int64))
    ort_cell = _cell(lambda: ort_policy.session.run(None, feeds), batch, calls)
    t_obs, t_noise, t_w = torch.from_numpy(obs), torch.from_numpy(noise), torch.from_numpy(w)
    with torch.inference_mode():
        eager_cell = _cell(lambda: eager(t_obs, t_noise, t_w), batch, calls)
    return ort_cell, eager_cell


def sweep(checkpoint: Path, solvers: Sequence[str], steps: Sequence[int], batches: Sequence[int] = DEFAULT_BATCHES,
          calls: int = DEFAULT_CALLS, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Time every (solver, steps, batch) cell on both engines.

    Returns ``{"rows": [...], ...}``: one row per (solver, steps, batch) with ``nfe``,
    ``onnxruntime`` / ``torch_eager`` ``{p50_ms, p99_ms, chunks_per_s}``, ``speedup_p50`` and the
    export's worst parity error (rad).
    """
    import torch

    from flow_policy_ros.export.onnx_export import export_checkpoint, sampler_from_checkpoint
    from flow_policy_ros.policy.checkpoint import load_checkpoint
    from flow_policy_ros.policy.flow import network_evaluations
    from flow_policy_ros.runtime.policy import load_policy

    torch.set_num_threads(1)
    ckpt = load_checkpoint(checkpoint)
    policy_cfg = ckpt.config.policy
    rng = np.random.default_rng(seed)
    inputs = {b: (rng.standard_normal((b, policy_cfg.obs_dim)).astype(np.float32),
                  rng.standard_normal((b, policy_cfg.horizon, policy_cfg.action_dim)).astype(np.float32)) for b in batches}
    rows: list[dict[str, Any]] = []
    combos = [(solver, n) for solver in solvers for n in steps]
    started = time.perf_counter()
    bar = tqdm(total=len(combos) * len(batches), desc="sweep", unit="cell", disable=not progress, dynamic_ncols=True)
    with tempfile.TemporaryDirectory(prefix="flow-policy-sweep-") as tmp:
        for solver, n in combos:
            path = Path(tmp) / f"{solver}_{n}.onnx"
            _, parity = export_checkpoint(checkpoint, path, steps=n, solver=solver)
            ort_policy = load_policy(path, providers=["CPUExecutionProvider"], intra_op_num_threads=1, warmup=0)
            eager = sampler_from_checkpoint(ckpt, n, solver=solver)
            for b in batches:
                bar.set_postfix(solver=solver, steps=n, batch=b)
                ort_cell, eager_cell = _time_engines(ort_policy, eager, *inputs[b], calls)
                rows.append({"solver": solver, "steps": n, "nfe": network_evaluations(solver, n), "batch": b,
                             "onnxruntime": ort_cell, "torch_eager": eager_cell,
                             "speedup_p50": eager_cell["p50_ms"] / ort_cell["p50_ms"],
                             "parity_max_abs_diff": max(row.max_abs_diff for row in parity)})
                bar.update()
    bar.close()
    return {"checkpoint": str(checkpoint), "horizon": policy_cfg.horizon, "action_dim": policy_cfg.action_dim,
            "calls_per_cell": calls, "threads": 1, "seconds": time.perf_counter() - started, "rows": rows}


def print_sweep_table(result: dict[str, Any]) -> None:
    print(f"bench --sweep: {result['checkpoint']}, H={result['horizon']} A={result['action_dim']}, CFG, "
          f"1 thread, {result['calls_per_cell']} calls per cell ({result['seconds']:.0f} s)")
    head = (f"{'solver':<9}{'steps':>5}{'NFE':>5}{'batch':>6} | {'ORT p50':>8}{'p99':>8}{'chunks/s':>10} | "
            f"{'eager p50':>9}{'p99':>8}{'chunks/s':>10} | {'speedup':>7}")
    print(head)
    print("-" * len(head))
    for row in result["rows"]:
        o, e = row["onnxruntime"], row["torch_eager"]
        print(f"{row['solver']:<9}{row['steps']:>5}{row['nfe']:>5}{row['batch']:>6} | {o['p50_ms']:>8.3f}{o['p99_ms']:>8.3f}"
              f"{o['chunks_per_s']:>10.0f} | {e['p50_ms']:>9.3f}{e['p99_ms']:>8.3f}{e['chunks_per_s']:>10.0f} | "
              f"{row['speedup_p50']:>6.1f}x")
    print("p50/p99 in ms per call (one call = `batch` chunks); chunks/s = batch / mean call time")
