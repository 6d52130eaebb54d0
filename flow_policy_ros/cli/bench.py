"""``flow-policy bench``: how fast is one decision?

Model benchmark (default): in ONE run, batch-1 chunk latency of ONNX Runtime (CPU provider,
1 thread) and of the PyTorch eager sampler with the same weights (1 thread), median and p99
over ``--calls`` calls after warm-up, plus batch-8 throughput; a table on stdout and a JSON
document. Numbers from one run are comparable with each other; across runs on a shared
2-core machine they drift, so quote ratios from one run.

``--ros`` runs the closed-loop ROS 2 benchmark instead (``flow_policy_ros.cli.ros_bench``);
``--sweep`` times solvers x steps x batch sizes on both engines (``flow_policy_ros.cli.bench_sweep``).
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from typing import Any

import numpy as np

from flow_policy_ros.cli import CliError, write_json
from flow_policy_ros.cli.timing import latency_stats, spaced_latency, throughput
from flow_policy_ros.sim.tasks import TASKS

CALLS_DEFAULT = 2000


def bench_model(model_path: Path, checkpoint: Path | None, calls: int, seed: int = 0,
                gap_ms: float = 0.0) -> dict[str, Any]:
    from flow_policy_ros.runtime.policy import load_policy

    policy = load_policy(model_path, providers=["CPUExecutionProvider"], intra_op_num_threads=1, seed=seed)
    session = onnx_session(policy, model_path)
    meta = policy.metadata
    rng = np.random.default_rng(seed)
    obs1 = rng.standard_normal((1, meta.obs_dim)).astype(np.float32)
    noise1 = rng.standard_normal((1, meta.horizon, meta.action_dim)).astype(np.float32)
    obs8 = rng.standard_normal((8, meta.obs_dim)).astype(np.float32)
    noise8 = rng.standard_normal((8, meta.horizon, meta.action_dim)).astype(np.float32)
    w = np.array([meta.guidance_scale], np.float32)
    feed1 = {"observation": obs1, "noise": noise1, "guidance_scale": w}
    feed8 = {"observation": obs8, "noise": noise8, "guidance_scale": w}
    # camera models: random uint8 frames of each image feature's shape (graph input image_<camera>)
    images1 = {f.name: rng.integers(0, 256, (1, *f.image_shape), dtype=np.uint8) for f in meta.observation.image_features}
    images8 = {f.name: rng.integers(0, 256, (8, *f.image_shape), dtype=np.uint8) for f in meta.observation.image_features}
    for feed, images in ((feed1, images1), (feed8, images8)):
        feed.update({"image_" + name.split(".", 1)[1]: frames for name, frames in images.items()})
    single_images = {name: frames[0] for name, frames in images1.items()} or None
    if meta.rtc:  # a real-time chunking graph also takes a (here empty) prefix
        for feed in (feed1, feed8):
            feed.update(prefix_actions=np.zeros_like(feed["noise"]), prefix_length=np.zeros(len(feed["noise"]), np.int64))

    result: dict[str, Any] = {
        "model": str(model_path),
        "model_name": meta.name,
        "horizon": meta.horizon,
        "action_dim": meta.action_dim,
        "solver_steps": meta.solver_steps,
        "solver": meta.solver,
        "guidance_scale": meta.guidance_scale,
        "cameras": {f.camera: list(f.image_shape) for f in meta.observation.image_features},
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
    }
    ort_stats = latency_stats(lambda: session.run(None, feed1), calls)
    ort_stats["predict_p50_ms"] = latency_stats(lambda: policy.predict(obs1[0], images=single_images),
                                                max(200, calls // 4))["p50_ms"]
    if gap_ms > 0:
        ort_stats["predict_spaced"] = spaced_latency(lambda: policy.predict(obs1[0], images=single_images), gap_ms * 1e-3)
    ort_stats["batch8_chunks_per_s"] = throughput(lambda: session.run(None, feed8), 8)
    ort_stats["provider"] = policy.active_provider
    result["onnxruntime"] = ort_stats

    if checkpoint is not None:
        import torch

        from flow_policy_ros.export.onnx_export import sampler_from_checkpoint
        from flow_policy_ros.policy.checkpoint import load_checkpoint

        torch.set_num_threads(1)
        sampler = sampler_from_checkpoint(load_checkpoint(checkpoint), meta.solver_steps, solver=meta.solver)
        t_obs1, t_noise1, t_w = torch.from_numpy(obs1), torch.from_numpy(noise1), torch.from_numpy(w)
        t_obs8, t_noise8 = torch.from_numpy(obs8), torch.from_numpy(noise8)
        t_img1 = {name.split(".", 1)[1]: torch.from_numpy(f) for name, f in images1.items()} or None
        t_img8 = {name.split(".", 1)[1]: torch.from_numpy(f) for name, f in images8.items()} or None

        with torch.inference_mode():
            torch_out = sampler(t_obs1, t_noise1, t_w, images=t_img1).numpy()
            torch_stats = latency_stats(lambda: sampler(t_obs1, t_noise1, t_w, images=t_img1), calls)
            torch_stats["batch8_chunks_per_s"] = throughput(lambda: sampler(t_obs8, t_noise8, t_w, images=t_img8), 8)
        torch_stats["threads"] = 1
        result["torch_eager"] = torch_stats
        result["speedup_p50"] = torch_stats["p50_ms"] / ort_stats["p50_ms"]
        result["speedup_p99"] = torch_stats["p99_ms"] / ort_stats["p99_ms"]
        result["max_abs_diff_vs_torch"] = float(np.max(np.abs(session.run(None, feed1)[0] - torch_out)))
    return result


def onnx_session(policy: Any, path: Path) -> Any:
    """The ONNX Runtime session behind ``policy``: the model benchmark times the raw graph call too."""
    session = getattr(policy, "session", None)
    if session is None:
        raise CliError(f"--model {path}: bench times an ONNX Runtime session; this engine has none")
    return session


def print_table(result: dict[str, Any]) -> None:
    print(f"model {result['model_name']}: H={result['horizon']} A={result['action_dim']} "
          f"N={result['solver_steps']} {result['solver']} CFG w={result['guidance_scale']}, batch 1, 1 thread"
          + "".join(f", camera {c} {s[0]}x{s[1]} (random uint8 frames)" for c, s in result.get("cameras", {}).items()))
    print(f"{'engine':<36} {'p50 ms':>8} {'p99 ms':>8} {'batch-8 chunks/s':>17}")
    rows = [("onnxruntime (" + result["onnxruntime"]["provider"] + ")", result["onnxruntime"])]
    if "torch_eager" in result:
        rows.append(("torch eager", result["torch_eager"]))
    for name, stats in rows:
        print(f"{name:<36} {stats['p50_ms']:>8.3f} {stats['p99_ms']:>8.3f} {stats['batch8_chunks_per_s']:>17.0f}")
    spaced = result["onnxruntime"].get("predict_spaced")
    if spaced:
        print(f"{'onnxruntime predict, 1 call / ' + format(spaced['gap_ms'], 'g') + ' ms':<36} "
              f"{spaced['p50_ms']:>8.3f} {spaced['p99_ms']:>8.3f}   (caches cold between calls, as in the node)")
    if "speedup_p50" in result:
        print(f"speedup (torch / onnxruntime): p50 {result['speedup_p50']:.1f}x, p99 {result['speedup_p99']:.1f}x")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="ONNX policy (default: the shipped iiwa_reach_rtc)")
    parser.add_argument("--checkpoint", help="checkpoint of the same weights, to compare with PyTorch eager")
    parser.add_argument("--calls", type=int, default=CALLS_DEFAULT,
                        help=f"timed calls per engine (default {CALLS_DEFAULT}; --sweep: per cell, default 200)")
    parser.add_argument("--json", help="write results to this JSON file")
    parser.add_argument("--gap-ms", type=float, default=0.0,
                        help="also time predict() once every GAP ms, as policy_node calls it (80 = replan_every 4 at "
                             "50 Hz); 100 calls")
    parser.add_argument("--ros", action="store_true", help="closed-loop ROS 2 benchmark (sim_node + policy_node)")
    parser.add_argument("--duration", type=float, default=60.0, help="--ros: seconds of closed loop (default 60)")
    parser.add_argument("--task", choices=TASKS, help="--ros: sim task (default reach; reach_object: the camera "
                        "model, sim_node publishing the camera)")
    parser.add_argument("--inference", choices=["inline", "thread"],
                        help="--ros: policy_node's inference_thread (default: config/policy.yaml's)")
    parser.add_argument("--executor", choices=["single_threaded", "events"],
                        help="--ros: policy_node's executor (default: config/policy.yaml's)")
    parser.add_argument("--sweep", action="store_true",
                        help="solvers x steps x batch table, ONNX Runtime vs PyTorch eager (needs --checkpoint)")
    parser.add_argument("--solvers", nargs="+", metavar="SOLVER", help="--sweep: solvers (default: all)")
    parser.add_argument("--steps", nargs="+", type=int, metavar="N", help="--sweep: step counts (default 1 2 5 10)")
    parser.add_argument("--batches", nargs="+", type=int, metavar="B", help="--sweep: batch sizes (default 1 8 64)")
    from flow_policy_ros.cli.demo import add_thread_priority_argument

    add_thread_priority_argument(parser)


def run(args: argparse.Namespace) -> int:
    if args.ros:
        from flow_policy_ros.cli import ros_bench

        return ros_bench.run(args)
    if args.sweep:
        return run_sweep(args)
    if args.calls < 100:
        raise CliError(f"--calls {args.calls}: use at least 100 calls for a meaningful p99")
    if args.model:
        model = Path(args.model)
    else:
        from flow_policy_ros.paths import default_model_path

        model = default_model_path()
    if not model.is_file():
        raise CliError(f"--model {model}: file not found")
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if checkpoint is not None and not checkpoint.is_file():
        raise CliError(f"--checkpoint {checkpoint}: file not found")
    if not 0 <= args.gap_ms <= 1000:
        raise CliError(f"--gap-ms {args.gap_ms}: use 0 (off) to 1000 ms")
    result = bench_model(model, checkpoint, args.calls, gap_ms=args.gap_ms)
    print_table(result)
    write_json(args.json, result)
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """``--sweep``: everything is checked before the first export."""
    from flow_policy_ros.cli import bench_sweep
    from flow_policy_ros.policy.flow import SOLVERS

    if not args.checkpoint:
        raise CliError("--sweep needs --checkpoint (the sweep exports it once per solver and step count)")
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise CliError(f"--checkpoint {checkpoint}: file not found")
    solvers = args.solvers or list(SOLVERS)
    unknown = [s for s in solvers if s not in SOLVERS]
    if unknown:
        raise CliError(f"--solvers {unknown}: unknown, choose from {list(SOLVERS)}")
    steps = args.steps or list(bench_sweep.DEFAULT_STEPS)
    batches = args.batches or list(bench_sweep.DEFAULT_BATCHES)
    for flag, values in (("--steps", steps), ("--batches", batches)):
        if min(values) < 1:
            raise CliError(f"{flag} {values}: every value must be >= 1")
    calls = bench_sweep.DEFAULT_CALLS if args.calls == CALLS_DEFAULT else args.calls
    if calls < 50:
        raise CliError(f"--calls {calls}: use at least 50 calls per cell for a p99")
    result = bench_sweep.sweep(checkpoint, solvers, steps, batches, calls)
    bench_sweep.print_sweep_table(result)
    write_json(args.json, result)
    return 0
