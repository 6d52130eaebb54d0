"""How well do K smooth basis functions per joint represent the demonstration chunks?

    python scripts/chunk_basis_fit.py DATA --config config/train_reach.yaml [--cache DIR]

For each basis (dct, bspline) and K: max / p99 / median over windows of max |x - M M^T x| (rad)
of the network's chunk (the configured action frame, before normalization), and the peak
|second difference| / dt^2 (rad/s^2) of the residual.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from flow_policy_ros.policy.basis import chunk_basis_matrix, reconstruction_error
from flow_policy_ros.policy.config import ExperimentConfig
from flow_policy_ros.policy.dataset import load_training_data
from flow_policy_ros.policy.normalization import action_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--config", required=True)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 6, 8])
    args = parser.parse_args()
    cfg = ExperimentConfig.from_yaml(args.config)
    w = load_training_data(Path(args.data), cfg.policy, cfg.data, cache_dir=Path(args.cache) if args.cache else None, progress=False)
    chunks = w.actions - action_reference(w.observations, cfg.policy.action_reference_indices())
    dt = cfg.policy.control_period_s
    acc = np.abs(np.diff(chunks, n=2, axis=1)).max(axis=(1, 2)) / dt**2
    print(f"{len(chunks)} windows; demo chunk peak |accel| (rad/s^2) max {acc.max():.2f} p99 {np.percentile(acc, 99):.2f}")
    print(f"{'basis':>8} {'K':>3} {'max err rad':>12} {'p99 err':>10} {'median':>10} {'resid accel max':>16}")
    for kind in ("dct", "bspline"):
        for k in args.sizes:
            m = chunk_basis_matrix(kind, cfg.policy.horizon, k)
            err = reconstruction_error(chunks, m)
            resid = np.einsum("hk,nka->nha", m, np.einsum("hk,nha->nka", m, chunks)) - chunks
            racc = np.abs(np.diff(resid, n=2, axis=1)).max() / dt**2
            print(f"{kind:>8} {k:>3} {err.max():>12.2e} {np.percentile(err, 99):>10.2e} {np.median(err):>10.2e} {racc:>16.2f}")


if __name__ == "__main__":
    main()
