"""Dense (fully connected) layer: y = x Wᵀ + b, forward and backward.

Shapes: x: (M, K) (leading axes flattened into M by the caller), w: (N, K),
b: (N,), y: (M, N).

Definition:   y[m, n] = b[n] + Σ_k x[m, k] · w[n, k]
Backward:     gx[m, k] = Σ_n g[m, n] · w[n, k]     (gx = g W)
              gw[n, k] = Σ_m g[m, n] · x[m, k]     (gw = gᵀ x)
              gb[n]    = Σ_m g[m, n]

The reference version is the triple loop above. The fast CPU version is BLAS
sgemm — already near the machine's peak, nothing for hand-written loops to win —
but run npdiff's way (see config.py): BLAS stays single-threaded and ``matmul``
splits the rows of the output over threads (``config.parallel_for``), each thread one sgemm on its
rows (``np.dot`` inside Numba). On a GPU, ``xp.matmul`` is cuBLAS (the xp and cuda columns). The
columns are registered in ``table.py``; the one dispatch validates (``checks.py``).

GPU twin: ``npdiff/kernels/cuda/gemm.py`` (the table's ``cuda`` column: a shared-memory
tiled GEMM under the simulator, cuBLAS through CuPy on a GPU).
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .config import jit_serial, num_threads, parallel_for

# below this many multiply-adds one thread finishes before a parallel launch pays off
PARALLEL_MIN_MACS = 1 << 23


@jit_serial
def _matmul_rows(lo, hi, a, b, out):
    """out[lo:hi] = a[lo:hi] @ b: one band of rows (``parallel_for`` gives each thread one band)."""
    if lo < hi:
        np.dot(a[lo:hi], b, out[lo:hi])


@jit_serial
def _matmul_tn_split(t0, t1, a, b, parts):
    """parts[t] = a[rows_t]ᵀ · b[rows_t] for t in [t0, t1): the M-long reduction of aᵀb split into
    len(parts) per-thread partial sums (row bands of a and b)."""
    M, T = a.shape[0], parts.shape[0]
    step = (M + T - 1) // T
    for t in range(t0, t1):
        lo = t * step
        hi = min(M, lo + step)
        if lo < hi:
            np.dot(a[lo:hi].T, b[lo:hi], parts[t])
        else:
            parts[t][:] = 0


def matmul_tn(a, b):
    """aᵀ (N, M) @ b (M, K) for a (M, N): the weight gradient gᵀx, whose long axis is the reduction.

    Splitting output rows would need a transposed copy of a; instead each thread reduces its own
    band of M into a private (N, K) buffer and the buffers are summed (no shared writes).
    """
    M, N = a.shape
    K = b.shape[1]
    nt = min(num_threads(), M)
    if get_array_module(a, b) is not np or nt < 2 or M * N * K < PARALLEL_MIN_MACS or a.dtype != b.dtype:
        return a.T @ b
    parts = np.empty((nt, N, K), a.dtype)
    parallel_for(_matmul_tn_split, nt, np.ascontiguousarray(a), np.ascontiguousarray(b), parts)
    return parts.sum(axis=0)


def matmul(a, b):
    """a (M, K) @ b (K, N) on the CPU: rows over threads (parallel_for), single-threaded sgemm each."""
    xp = get_array_module(a, b)
    M, K = a.shape
    N = b.shape[1]
    nt = min(num_threads(), M)
    if xp is not np or nt < 2 or M * K * N < PARALLEL_MIN_MACS or a.dtype != b.dtype:
        return xp.matmul(a, b)
    a = np.ascontiguousarray(a)
    if not (b.flags.c_contiguous or b.flags.f_contiguous):
        b = np.ascontiguousarray(b)
    out = np.empty((M, N), a.dtype)
    parallel_for(_matmul_rows, M, a, b, out)
    return out


def linear_forward_reference(x, w, b=None):
    """y[m, n] = b[n] + Σ_k x[m, k]·w[n, k] by the triple loop; x (..., K), the leading axes are the rows m."""
    x2 = x.reshape(-1, x.shape[-1])  # (M, K)
    M, K = x2.shape
    N = w.shape[0]
    y = np.zeros((M, N), dtype=x.dtype)
    for m in range(M):
        for n in range(N):
            acc = 0.0
            for k in range(K):
                acc += x2[m, k] * w[n, k]
            y[m, n] = acc + (b[n] if b is not None else 0.0)
    return y.reshape(x.shape[:-1] + (N,))


def linear_backward_reference(g, x, w, need_x=True, need_w=True, need_b=True):
    """(gx, gw, gb) by the chain rule over the forward's loop: each y[m, n] sends g[m, n]·w[n, k]
    to x[m, k], g[m, n]·x[m, k] to w[n, k] and g[m, n] to b[n]; None where not needed."""
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])  # (M, K), (M, N)
    M, K = x2.shape
    N = w.shape[0]
    gx = np.zeros_like(x2)
    gw = np.zeros_like(w)
    gb = np.zeros(N, dtype=g.dtype)
    for m in range(M):
        for n in range(N):
            gb[n] += g2[m, n]
            for k in range(K):
                gx[m, k] += g2[m, n] * w[n, k]
                gw[n, k] += g2[m, n] * x2[m, k]
    return gx.reshape(x.shape) if need_x else None, gw if need_w else None, gb if need_b else None


def linear_forward_numba(x, w, b=None):
    """y = x wᵀ (+ b) for x of shape (..., K); the leading axes are batched into one GEMM."""
    lead = x.shape[:-1]
    y = matmul(x.reshape(-1, x.shape[-1]), w.T)  # (M, N)
    if b is not None:
        y += b
    return y.reshape(lead + (w.shape[0],))


def linear_backward_numba(g, x, w, need_x=True, need_w=True, need_b=True):
    """Gradients of ``linear_forward`` for upstream ``g`` of shape (..., N)."""
    g2 = g.reshape(-1, g.shape[-1])  # (M, N)
    x2 = x.reshape(-1, x.shape[-1])  # (M, K)
    gx = matmul(g2, w).reshape(x.shape) if need_x else None
    gw = matmul_tn(g2, x2) if need_w else None  # (N, K) = gᵀx
    gb = g2.sum(axis=0) if need_b else None
    return gx, gw, gb


def linear_forward_xp(x, w, b=None):
    """y = x wᵀ (+ b) with xp.matmul (cuBLAS on a GPU)."""
    y = get_array_module(x).matmul(x, w.T)  # (..., N)
    return y if b is None else y + b


def linear_backward_xp(g, x, w, need_x=True, need_w=True, need_b=True):
    """(gx, gw, gb) of linear with xp.matmul."""
    xp = get_array_module(x)
    g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])  # (M, N), (M, K)
    gx = xp.matmul(g, w) if need_x else None
    gw = xp.matmul(g2.T, x2) if need_w else None
    gb = g2.sum(axis=0) if need_b else None
    return gx, gw, gb
