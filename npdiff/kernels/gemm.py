"""Dense (fully connected) layer: y = x Wᵀ + b, forward and backward.

Shapes: x: (M, K) (leading axes flattened into M by the caller), w: (N, K),
b: (N,), y: (M, N).

Definition:   y[m, n] = b[n] + Σ_k x[m, k] · w[n, k]
Backward:     gx[m, k] = Σ_n g[m, n] · w[n, k]     (gx = g W)
              gw[n, k] = Σ_m g[m, n] · x[m, k]     (gw = gᵀ x)
              gb[n]    = Σ_m g[m, n]

The reference version is the triple loop above. The fast version is one BLAS
sgemm per product through ``xp.matmul`` (numpy's OpenBLAS on the CPU, cuBLAS
through cupy): a GEMM already runs near the machine's peak, so there is nothing
for a hand-written Numba loop to win here.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module


def linear_forward_reference(x, w, b=None):
    M, K = x.shape
    N = w.shape[0]
    y = np.zeros((M, N), dtype=x.dtype)
    for m in range(M):
        for n in range(N):
            acc = 0.0
            for k in range(K):
                acc += x[m, k] * w[n, k]
            y[m, n] = acc + (b[n] if b is not None else 0.0)
    return y


def linear_backward_reference(g, x, w):
    M, K = x.shape
    N = w.shape[0]
    gx = np.zeros_like(x)
    gw = np.zeros_like(w)
    gb = np.zeros(N, dtype=g.dtype)
    for m in range(M):
        for n in range(N):
            gb[n] += g[m, n]
            for k in range(K):
                gx[m, k] += g[m, n] * w[n, k]
                gw[n, k] += g[m, n] * x[m, k]
    return gx, gw, gb


def linear_forward(x, w, b=None):
    """y = x wᵀ (+ b) for x of shape (..., K); the leading axes are batched into one GEMM."""
    xp = get_array_module(x, w)
    lead = x.shape[:-1]
    y = xp.matmul(x.reshape(-1, x.shape[-1]), w.T)  # (M, N)
    if b is not None:
        y += b
    return y.reshape(lead + (w.shape[0],))


def linear_backward(g, x, w, need_x=True, need_w=True, need_b=True):
    """Gradients of ``linear_forward`` for upstream ``g`` of shape (..., N)."""
    xp = get_array_module(g, x, w)
    g2 = g.reshape(-1, g.shape[-1])  # (M, N)
    x2 = x.reshape(-1, x.shape[-1])  # (M, K)
    gx = xp.matmul(g2, w).reshape(x.shape) if need_x else None
    gw = xp.matmul(g2.T, x2) if need_w else None
    gb = g2.sum(axis=0) if need_b else None
    return gx, gw, gb
