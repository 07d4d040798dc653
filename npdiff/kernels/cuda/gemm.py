"""Matrix products and linear layers on the GPU (Numba CUDA): the ``cuda`` column of the linear rows.

The CPU twin, with the definitions and reference loops, is ``npdiff/kernels/gemm.py``:
y = x wᵀ + b for x (..., K), w (N, K); gx = g w, gw = gᵀ x, gb = Σ_rows g.

``gemm`` is the shared-memory tiled product c = op(a)·op(b), op = identity or transpose: a
block of TILE×TILE threads owns a TILE×TILE tile of c (one element per thread) and walks
the reduction axis in steps of TILE, each step loading one tile of each operand into shared
memory (one element per thread, 0 past the edges), waiting, and adding TILE products —
the same loop as the implicit-GEMM convolutions in ``cuda/conv.py``, with plain matrices.

Which GEMM runs: under the simulator (numpy arrays) this kernel. On a GPU (cupy arrays) the
linear rows call **cuBLAS through CuPy** (``xp.matmul``): a library GEMM is the honest
choice there — register blocking, double-buffered tiles and tensor cores make cuBLAS an
order of magnitude faster than a 16×16-tile kernel, and linear layers are plain GEMMs with
nothing to fuse. ``NPDIFF_CUDA_GEMM=numba`` makes the GPU run ``gemm`` too (for comparison
and for the GPU tests of this kernel).
"""

from __future__ import annotations

import functools
import os

from numba import cuda

from .common import TILE, blocks, kernel, launch, numba_type, sum_channels, xp_of

OURS_ON_GPU = os.environ.get("NPDIFF_CUDA_GEMM", "cublas") == "numba"


@functools.lru_cache(maxsize=None)
def _gemm(dtype):
    T = numba_type(dtype)

    @kernel("A2 A2 b b A2", dtype)
    def gemm(a, b, ta, tb, c):
        """c (M, N) = op(a) op(b): op(a)[m, k] = a[k, m] if ta else a[m, k]; likewise b."""
        at = cuda.shared.array((TILE, TILE), T)  # at[r, k]
        bt = cuda.shared.array((TILE, TILE), T)  # bt[k, q]
        M, N = c.shape
        K = a.shape[0] if ta else a.shape[1]
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        m = cuda.blockIdx.y * TILE + ty
        n = cuda.blockIdx.x * TILE + tx
        acc = T(0)
        for k0 in range(0, K, TILE):
            k = k0 + tx
            if m < M and k < K:
                at[ty, tx] = a[k, m] if ta else a[m, k]
            else:
                at[ty, tx] = 0
            k = k0 + ty
            if k < K and n < N:
                bt[ty, tx] = b[n, k] if tb else b[k, n]
            else:
                bt[ty, tx] = 0
            cuda.syncthreads()
            for kk in range(TILE):
                acc += at[ty, kk] * bt[kk, tx]
            cuda.syncthreads()
        if m < M and n < N:
            c[m, n] = acc

    return gemm


def matmul(a, b, ta=False, tb=False):
    """op(a)·op(b) on the arrays' device (cuBLAS on cupy arrays unless NPDIFF_CUDA_GEMM=numba)."""
    xp = xp_of(a)
    if xp.__name__ == "cupy" and not OURS_ON_GPU:
        return xp.matmul(a.T if ta else a, b.T if tb else b)
    M = a.shape[1] if ta else a.shape[0]
    N = b.shape[0] if tb else b.shape[1]
    c = xp.empty((M, N), a.dtype)
    _gemm(a.dtype)[(blocks(N, TILE), blocks(M, TILE)), (TILE, TILE)](a, b, bool(ta), bool(tb), c)
    return c


@kernel("A2 A1")
def add_bias(y, b):
    """y[m, n] += b[n]: one thread per element."""
    e = cuda.grid(1)
    M, N = y.shape
    if e < M * N:
        y[e // N, e % N] += b[e % N]


def linear_forward_cuda(x, w, b=None):
    """cuda column of linear_forward: y = x wᵀ (+ b)."""
    lead = x.shape[:-1]
    y = matmul(x.reshape(-1, x.shape[-1]), w, tb=True)  # (M, N)
    if b is not None:
        launch(add_bias, y.size, y, b)
    return y.reshape(lead + (w.shape[0],))


def linear_backward_cuda(g, x, w, need_x=True, need_w=True, need_b=True):
    """cuda column of linear_backward: gx = g w, gw = gᵀ x, gb = Σ_rows g."""
    g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])  # (M, N), (M, K)
    gx = matmul(g2, w).reshape(x.shape) if need_x else None
    gw = matmul(g2, x2, ta=True) if need_w else None
    gb = sum_channels(g2.reshape(g2.shape[0], g2.shape[1], 1)) if need_b else None
    return gx, gw, gb
