#!/usr/bin/env python3
"""Log-likelihood error of the observation density versus solver and step count (issue 24, item 6).

Two cases, both D = 17 (the size of a joint-state + velocity + goal observation), each a table of
max |log p_solver,N - log p_reference| in nats over held-out points, for Euler, midpoint, Heun
and RK4 at N = 1 .. 64 fixed steps (network evaluations per likelihood: N, 2N, 2N, 4N):

1. closed form: data N(mu, Sigma) in normalized units, whose optimal flow-matching field is
   ``density.GaussianFlowField``; the reference is the exact Gaussian log-density. Three spectra
   of Sigma: eigenvalues in [0.25, 1] (well spread data), [1e-2, 1] and [1e-3, 1] (strongly
   correlated dimensions: the field gets stiff near t = 1, where the flow contracts them);
2. trained: ``density.train_density`` (600 steps, default config) on a synthetic 17-D data set
   (a 5-D latent mapped linearly, plus 0.02 noise per dimension, minmax-normalized); the reference
   is RK4 with 256 steps of the same model (no closed form: this measures integration error only).

    .venv/bin/python scripts/density_solver_table.py            # ~30 s on one thread
    .venv/bin/python scripts/density_solver_table.py --markdown docs/density_solvers_table.md
    .venv/bin/python scripts/density_solver_table.py --cost     # + ONNX Runtime p50 of the graph

``--cost`` also exports the trained model's log-likelihood alone (``ObservationLogLikelihood``,
TorchScript exporter, opset 17) per solver and step count and times ONNX Runtime (CPU, one
thread, batch 1, 1000 calls after 100 warm-up calls): p50 and the graph's node count.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from flow_policy_ros.policy.density import (  # noqa: E402
    GaussianFlowField,
    ObservationDensity,
    ObservationLogLikelihood,
    log_likelihood,
    train_density,
)
from flow_policy_ros.policy.flow import SOLVERS, network_evaluations  # noqa: E402

DIM = 17
STEPS = (1, 2, 4, 8, 16, 32, 64)
SPECTRA = ((0.25, 1.0), (1e-2, 1.0), (1e-3, 1.0))


def gaussian_case(low: float, high: float, points: int, seed: int) -> tuple[GaussianFlowField, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=gen, dtype=torch.float64))
    lam = torch.logspace(math.log10(low), math.log10(high), DIM, dtype=torch.float64)
    mu = 0.5 * torch.randn(DIM, generator=gen, dtype=torch.float64)
    field = GaussianFlowField(mu, (q * lam) @ q.t())
    chol = torch.linalg.cholesky(field.sigma)
    return field, mu + torch.randn(points, DIM, generator=gen, dtype=torch.float64) @ chol.t()


def error_table(field, y: torch.Tensor, reference: torch.Tensor) -> dict[str, list[float]]:
    return {solver: [float((log_likelihood(field, y, n, solver) - reference).abs().max()) for n in STEPS]
            for solver in SOLVERS}


def format_table(title: str, table: dict[str, list[float]]) -> str:
    head = "| solver | " + " | ".join(f"N={n}" for n in STEPS) + " |"
    lines = [f"**{title}**", "", head, "|" + "---|" * (len(STEPS) + 1)]
    for solver, errors in table.items():
        cells = " | ".join(f"{e:.1e} ({network_evaluations(solver, n)})" for e, n in zip(errors, STEPS))
        lines.append(f"| {solver} | {cells} |")
    return "\n".join(lines)


COST_CELLS = (("euler", 8), ("midpoint", 8), ("rk4", 4), ("rk4", 8), ("rk4", 16))


def ort_p50_ms(path: str, feeds: dict[str, np.ndarray], calls: int = 1000) -> float:
    """ONNX Runtime p50 in ms (CPU, 1 thread) of ``calls`` runs after 100 warm-up runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for _ in range(100):
        session.run(None, feeds)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.percentile(times, 50))


def onnx_cost(model: ObservationDensity) -> str:
    """Markdown table: ORT p50 (ms) and node count of the exported log-likelihood per cell, and of
    the shipped policy graph models/iiwa_reach.onnx for scale."""
    import onnx

    lines = ["**ONNX Runtime, log-likelihood graph alone (CPU, 1 thread, batch 1)**", "",
             "| graph | evaluations | p50 ms | nodes |", "|---|---|---|---|"]
    model = model.float().eval()
    x = model.obs_shift[None].numpy()
    with tempfile.TemporaryDirectory() as tmp:
        for solver, steps in COST_CELLS:
            path = str(Path(tmp) / f"{solver}_{steps}.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(ObservationLogLikelihood(model, steps, solver), (torch.zeros(1, DIM),), path,
                                  input_names=["observation"], output_names=["observation_log_likelihood"],
                                  opset_version=17, do_constant_folding=True, dynamo=False)
            lines.append(f"| density {solver} x {steps} | {network_evaluations(solver, steps)} | "
                         f"{ort_p50_ms(path, {'observation': x}):.3f} | {len(onnx.load(path).graph.node)} |")
    policy = REPO / "models" / "iiwa_reach.onnx"
    if policy.is_file():
        graph = onnx.load(str(policy))
        feeds = {}
        for tensor in graph.graph.input:
            shape = [d.dim_value or 1 for d in tensor.type.tensor_type.shape.dim]
            feeds[tensor.name] = np.zeros(shape, np.float32) if tensor.name != "guidance_scale" else np.ones(shape, np.float32)
        lines.append(f"| policy models/iiwa_reach.onnx (whole sampler, CFG) | - | {ort_p50_ms(str(policy), feeds):.3f} | "
                     f"{len(graph.graph.node)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=256, help="held-out points per case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--cost", action="store_true", help="also time the exported graph in ONNX Runtime")
    args = parser.parse_args()
    torch.set_num_threads(1)

    sections = ["max |log p error| in nats over the points (network evaluations per likelihood in brackets)"]
    for low, high in SPECTRA:
        field, y = gaussian_case(low, high, args.points, args.seed)
        sections.append(format_table(f"closed form, D = {DIM}, eigenvalues of Sigma in [{low:g}, {high:g}] "
                                     f"(mean exact log p {float(field.log_prob(y).mean()):.1f})",
                                     error_table(field, y, field.log_prob(y))))

    rng = np.random.default_rng(args.seed)
    mixing = rng.normal(size=(5, DIM))
    data = np.tanh(rng.normal(size=(6000, 5))) @ mixing + 0.02 * rng.normal(size=(6000, DIM))
    trained32 = train_density(data[:5000], steps=600, seed=args.seed).model
    trained = ObservationDensity.from_dict(trained32.to_dict()).double()
    y = trained.normalize(torch.tensor(data[5000:5000 + args.points]))
    with torch.no_grad():
        reference = log_likelihood(trained.field, y, 256, "rk4")
        table = error_table(trained.field, y, reference)
    sections.append(format_table(f"trained density (600 steps), D = {DIM}, 5-D latent + noise; reference RK4 x 256 "
                                 f"(mean log p {float(reference.mean()):.1f}, normalized units)", table))
    if args.cost:
        sections.append(onnx_cost(trained32))
    text = "\n\n".join(sections) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
