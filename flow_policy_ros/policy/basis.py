"""Smooth action-chunk bases: the flow runs over K < H coefficients per joint, not H raw actions.

A chunk x (H, A) is represented as x = M c with a fixed matrix M (H, K) whose K columns are
orthonormal (M^T M = I_K) and smooth in time, and coefficients c = M^T x (K, A). The velocity
network sees and predicts c; the exported graph decodes c -> actions with one constant MatMul,
so every sampled chunk lies in the span of K smooth functions of time: it cannot carry
per-timestep jitter, whatever the sample.

Noise keeps the ONNX contract [B, H, A]: the graph projects it, c0 = M^T x0. For x0 ~ N(0, I)
and orthonormal columns, c0 ~ N(0, I_K), so training may draw c0 directly.

Bases (``policy.chunk_basis``):
- ``none``: identity (K = H), the plain flow over raw actions;
- ``dct``: the first K DCT-II (orthonormal) cosines, cos(pi (h + 1/2) k / H), k = 0..K-1;
- ``bspline``: the span of K clamped uniform cubic B-splines on [0, 1], orthonormalized (QR):
  reproduces any cubic polynomial in time exactly (a ramp from the current position included).

Torch-free (numpy), so the config, export and tests share it.
"""

from __future__ import annotations

import numpy as np

from flow_policy_ros.policy.config import CHUNK_BASES


def dct_matrix(horizon: int, size: int) -> np.ndarray:
    """(H, K) orthonormal DCT-II columns k = 0..K-1."""
    h = np.arange(horizon)[:, None] + 0.5
    k = np.arange(size)[None, :]
    m = np.sqrt(2.0 / horizon) * np.cos(np.pi * h * k / horizon)
    m[:, 0] /= np.sqrt(2.0)
    return m


def bspline_matrix(horizon: int, size: int, degree: int = 3) -> np.ndarray:
    """(H, K) clamped uniform B-splines of ``degree`` evaluated at t_h = h / (H - 1) (not orthonormal)."""
    degree = min(degree, size - 1)
    inner = np.linspace(0.0, 1.0, size - degree + 1)
    knots = np.concatenate([np.zeros(degree), inner, np.ones(degree)])
    t = np.linspace(0.0, 1.0, horizon) if horizon > 1 else np.zeros(1)
    # Cox-de Boor recursion; the last sample (t = 1) belongs to the last non-empty span
    basis = np.zeros((horizon, len(knots) - 1))
    for i in range(len(knots) - 1):
        basis[:, i] = (knots[i] <= t) & (t < knots[i + 1])
    last = max(i for i in range(len(knots) - 1) if knots[i] < knots[i + 1])
    basis[t >= 1.0, :] = 0.0
    basis[t >= 1.0, last] = 1.0
    for d in range(1, degree + 1):
        nxt = np.zeros((horizon, len(knots) - 1 - d))
        for i in range(len(knots) - 1 - d):
            left = knots[i + d] - knots[i]
            right = knots[i + d + 1] - knots[i + 1]
            if left > 0:
                nxt[:, i] += (t - knots[i]) / left * basis[:, i]
            if right > 0:
                nxt[:, i] += (knots[i + d + 1] - t) / right * basis[:, i + 1]
        basis = nxt
    return basis


def orthonormalize(m: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning the same space (QR, signs fixed so the diagonal of R is > 0)."""
    q, r = np.linalg.qr(m)
    return q * np.sign(np.diag(r))[None, :]


def chunk_basis_matrix(kind: str, horizon: int, size: int) -> np.ndarray:
    """(H, K) float64 matrix with orthonormal columns for basis ``kind`` (K = H for 'none')."""
    if kind == "none":
        return np.eye(horizon)
    if not 1 <= size <= horizon:
        raise ValueError(f"basis_size must be in [1, horizon={horizon}], got {size}")
    if kind == "dct":
        return dct_matrix(horizon, size)
    if kind == "bspline":
        return orthonormalize(bspline_matrix(horizon, size))
    raise ValueError(f"chunk_basis must be one of {CHUNK_BASES}, got {kind!r}")


def reconstruction_error(chunks: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Per-chunk max |x - M M^T x| over steps and joints; chunks (N, H, A) -> (N,)."""
    coeffs = np.einsum("hk,nha->nka", matrix, chunks)
    return np.abs(np.einsum("hk,nka->nha", matrix, coeffs) - chunks).max(axis=(1, 2))
