"""Group, layer and batch norm on the GPU (Numba CUDA): the ``cuda`` column of the norm rows.

The CPU twin, with the definitions, the closed-form backward and the reference loops, is
``npdiff/kernels/norm.py``: x̂ = (x − μ)·ρ, ρ = 1/√(σ² + ε), y = x̂·w + b, and with ĝ = g·w,
    dx = ρ·ĝ − ρ·Σĝ/M − ρ³·(x − μ)·Σĝ(x − μ)/M      (sums over the statistics set of size M),
    dw = Σ g·x̂,   db = Σ g                          (sums over everything but the channel).

All three ops see x as a 3-D array (A, C, S) and name the statistics set of element
(a, c, s) as k = a·sA + c // cdiv:

| op          | view (A, C, S)        | sA | cdiv   | sets                    |
|-------------|-----------------------|----|--------|-------------------------|
| group norm  | (N, C, H·W)           | G  | C / G  | (n, group): rows of (N·G, C/G·S) |
| layer norm  | (rows, D, 1)          | 1  | D      | each row                |
| batch norm  | (N, C, H·W)           | 0  | 1      | each channel            |

Kernels (statistics and sums in float64, two passes, as on the CPU):
  * ``row_stats``: one block per row of a (R, M) array — group and layer norm sets are rows.
    The block's threads stride over the row summing x (``common.block_sum``: a shared-memory
    tree), then Σ(x − μ)², then thread 0 writes μ and ρ.
  * ``channel_stats``: the same for batch norm's sets, channel c over all (n, s).
  * ``normalize``: one thread per element, y = (x − μ_k)·ρ_k·w[c] + b[c].
  * ``row_grad_sums`` / channel sums: per set Σĝ and Σĝ(x − μ) (block reductions), and per
    channel Σg and Σg·x̂ (``channel_grad_sums``, one block per channel) for dw and db.
  * ``grad_input``: one thread per element, dx from the formula above (ρ·ĝ in batch norm's
    eval mode, whose statistics are constants).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from ..checks import normalized_shape as _normalized_shape
from ..norm import _group_norm_output
from .elementwise import silu_backward_cuda, silu_forward_cuda
from .common import BLOCK, block_sum, kernel, launch, threads_for, xp_of


@kernel("A2 f D1 D1")
def row_stats(x2, eps, mean, rstd):
    """mean[r], rstd[r] of row r of x2 (R, M): one block per row, two passes."""
    buf = cuda.shared.array(BLOCK, numba.float64)
    r = cuda.blockIdx.x
    M = x2.shape[1]
    acc = 0.0
    for m in range(cuda.threadIdx.x, M, cuda.blockDim.x):
        acc += x2[r, m]
    mu = block_sum(buf, acc) / M
    acc = 0.0
    for m in range(cuda.threadIdx.x, M, cuda.blockDim.x):
        d = x2[r, m] - mu
        acc += d * d
    var = block_sum(buf, acc) / M
    if cuda.threadIdx.x == 0:
        mean[r] = mu
        rstd[r] = 1.0 / math.sqrt(var + eps)


@kernel("A3 f D1 D1 D1")
def channel_stats(x3, eps, mean, rstd, var):
    """Batch norm statistics of channel c of x3 (N, C, S) over (n, s): one block per channel."""
    buf = cuda.shared.array(BLOCK, numba.float64)
    c = cuda.blockIdx.x
    N, _, S = x3.shape
    acc = 0.0
    for e in range(cuda.threadIdx.x, N * S, cuda.blockDim.x):
        acc += x3[e // S, c, e % S]
    mu = block_sum(buf, acc) / (N * S)
    acc = 0.0
    for e in range(cuda.threadIdx.x, N * S, cuda.blockDim.x):
        d = x3[e // S, c, e % S] - mu
        acc += d * d
    v = block_sum(buf, acc) / (N * S)
    if cuda.threadIdx.x == 0:
        mean[c] = mu
        rstd[c] = 1.0 / math.sqrt(v + eps)
        var[c] = v


@kernel("A3 D1 D1 D1 D1 i i A3")
def normalize(x3, mean, rstd, w, b, sA, cdiv, out):
    """out[a, c, s] = (x − μ_k)·ρ_k·w[c] + b[c], k = a·sA + c // cdiv: one thread per element."""
    e = cuda.grid(1)
    A, C, S = x3.shape
    if e < A * C * S:
        a, c, s = e // (C * S), (e // S) % C, e % S
        k = a * sA + c // cdiv
        out[a, c, s] = (x3[a, c, s] - mean[k]) * rstd[k] * w[c] + b[c]


@kernel("A2 A2 D1 D1 i i D1 D1")
def row_grad_sums(g2, x2, mean, w, G, S, s1, s2):
    """Per row r of (R, M): s1 = Σĝ, s2 = Σĝ(x − μ), ĝ = g·w[c], c = (r % G)·(M / S) + m // S."""
    buf = cuda.shared.array(BLOCK, numba.float64)
    r = cuda.blockIdx.x
    M = x2.shape[1]
    c0 = (r % G) * (M // S)
    a1 = 0.0
    a2 = 0.0
    for m in range(cuda.threadIdx.x, M, cuda.blockDim.x):
        gh = g2[r, m] * w[c0 + m // S]
        a1 += gh
        a2 += gh * (x2[r, m] - mean[r])
    t1 = block_sum(buf, a1)
    t2 = block_sum(buf, a2)
    if cuda.threadIdx.x == 0:
        s1[r] = t1
        s2[r] = t2


@kernel("A3 A3 D1 D1 i i D1 D1")
def channel_grad_sums(g3, x3, mean, rstd, sA, cdiv, sg, sgx):
    """Per channel c of (A, C, S): sg = Σ g, sgx = Σ g·x̂ over (a, s): one block per channel."""
    buf = cuda.shared.array(BLOCK, numba.float64)
    c = cuda.blockIdx.x
    A, _, S = x3.shape
    a1 = 0.0
    a2 = 0.0
    for e in range(cuda.threadIdx.x, A * S, cuda.blockDim.x):
        a, s = e // S, e % S
        k = a * sA + c // cdiv
        gv = g3[a, c, s]
        a1 += gv
        a2 += gv * (x3[a, c, s] - mean[k]) * rstd[k]
    t1 = block_sum(buf, a1)
    t2 = block_sum(buf, a2)
    if cuda.threadIdx.x == 0:
        sg[c] = t1
        sgx[c] = t2


@kernel("A3 A3 D1 D1 D1 D1 D1 f i i b A3")
def grad_input(g3, x3, mean, rstd, w, s1, s2, M, sA, cdiv, training, dx):
    """dx = ρ·ĝ − ρ·s1/M − ρ³·(x − μ)·s2/M per element (ρ·ĝ when not training)."""
    e = cuda.grid(1)
    A, C, S = x3.shape
    if e < A * C * S:
        a, c, s = e // (C * S), (e // S) % C, e % S
        k = a * sA + c // cdiv
        rho = rstd[k]
        v = rho * g3[a, c, s] * w[c]
        if training:
            v -= rho * s1[k] / M + rho * rho * rho * (x3[a, c, s] - mean[k]) * s2[k] / M
        dx[a, c, s] = v


def _f64(xp, a, n, fill):
    return xp.full(n, fill, np.float64) if a is None else a.reshape(n).astype(np.float64)


def _apply(x3, mean, rstd, weight, bias, sA, cdiv):
    xp = xp_of(x3)
    C = x3.shape[1]
    out = xp.empty_like(x3)
    launch(normalize, x3.size, x3, mean, rstd, _f64(xp, weight, C, 1.0), _f64(xp, bias, C, 0.0), sA,
                                             cdiv, out)
    return out


def _row_forward(x3, x2, weight, bias, eps, sA, cdiv):
    xp = xp_of(x3)
    R = x2.shape[0]
    mean, rstd = xp.empty(R), xp.empty(R)
    row_stats[R, threads_for(x2.shape[1])](x2, float(eps), mean, rstd)
    return _apply(x3, mean, rstd, weight, bias, sA, cdiv), mean, rstd


def _backward(g3, x3, g2, x2, mean, rstd, weight, sA, cdiv, G, S, training):
    """dx (A, C, S), dw (C,), db (C,) for sets given by (sA, cdiv); g2/x2 the row view, or None
    when the sets are channels (batch norm)."""
    xp = xp_of(x3)
    C = x3.shape[1]
    mean, rstd = mean.reshape(-1).astype(np.float64), rstd.reshape(-1).astype(np.float64)
    w = _f64(xp, weight, C, 1.0)
    sg, sgx = xp.empty(C), xp.empty(C)
    channel_grad_sums[C, threads_for(x3.shape[0] * x3.shape[2])](g3, x3, mean, rstd, sA, cdiv, sg, sgx)
    if g2 is not None:
        R, M = x2.shape
        s1, s2 = xp.empty(R), xp.empty(R)
        row_grad_sums[R, threads_for(M)](g2, x2, mean, w, G, S, s1, s2)
    else:  # batch norm: the sets are the channels, Σĝ = w·Σg and Σĝ(x − μ) = w·Σg·x̂/ρ
        M = x3.shape[0] * x3.shape[2]
        s1, s2 = w * sg, w * sgx / rstd
    dx = xp.empty_like(x3)
    launch(grad_input, x3.size, g3, x3, mean, rstd, w, s1, s2, float(M), sA, cdiv, bool(training), dx)
    return dx, sgx, sg


def group_norm_forward_cuda(x, num_groups, weight=None, bias=None, eps=1e-5):
    """cuda column of group_norm_forward: ``row_stats`` over (N·G, C/G·S) rows, then ``normalize``."""
    N, C = x.shape[:2]
    x3 = x.reshape(N, C, -1)  # (N, C, S)
    y, mean, rstd = _row_forward(x3, x.reshape(N * num_groups, -1), weight, bias, eps, num_groups, C // num_groups)
    return y.reshape(x.shape), mean.reshape(N, num_groups).astype(x.dtype), rstd.reshape(N, num_groups).astype(x.dtype)


def group_norm_backward_cuda(g, x, mean, rstd, num_groups, weight=None):
    """cuda column of group_norm_backward."""
    N, C = x.shape[:2]
    x3, g3 = x.reshape(N, C, -1), g.reshape(N, C, -1)  # (N, C, S)
    dx, dw, db = _backward(g3, x3, g.reshape(N * num_groups, -1), x.reshape(N * num_groups, -1), mean, rstd, weight,
                           num_groups, C // num_groups, num_groups, x3.shape[2], True)
    wdt = x.dtype if weight is None else weight.dtype
    return dx.reshape(x.shape), dw.astype(wdt), db.astype(wdt)


def group_norm_silu_forward_cuda(x, num_groups, weight=None, bias=None, eps=1e-5):
    """cuda column of group_norm_silu_forward: the group-norm kernels, then the SiLU map (two
    passes over memory; the one-pass fusion is the numba column's)."""
    z, mean, rstd = group_norm_forward_cuda(x, num_groups, weight, bias, eps)
    return silu_forward_cuda(z), mean, rstd


def group_norm_silu_backward_cuda(g, x, mean, rstd, num_groups, weight=None, bias=None):
    """cuda column of group_norm_silu_backward: z recomputed from the statistics, dz = g·silu'(z)
    (the SiLU gradient kernel), then the group-norm backward of dz."""
    z = _group_norm_output(x, mean, rstd, num_groups, weight, bias)
    return group_norm_backward_cuda(silu_backward_cuda(g, z), x, mean, rstd, num_groups, weight)


def layer_norm_forward_cuda(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """cuda column of layer_norm_forward: ``row_stats`` over (rows, D), then ``normalize``."""
    ns = _normalized_shape(normalized_shape)
    D = math.prod(ns)
    lead = x.shape[: x.ndim - len(ns)]
    x2 = x.reshape(-1, D)  # (R, D)
    y, mean, rstd = _row_forward(x2.reshape(-1, D, 1), x2, weight, bias, eps, 1, D)
    return y.reshape(x.shape), mean.reshape(lead).astype(x.dtype), rstd.reshape(lead).astype(x.dtype)


def layer_norm_backward_cuda(g, x, mean, rstd, normalized_shape, weight=None):
    """cuda column of layer_norm_backward."""
    ns = _normalized_shape(normalized_shape)
    D = math.prod(ns)
    x2, g2 = x.reshape(-1, D), g.reshape(-1, D)  # (R, D)
    dx, dw, db = _backward(g2.reshape(-1, D, 1), x2.reshape(-1, D, 1), g2, x2, mean, rstd, weight, 1, D, 1, 1, True)
    wdt = x.dtype if weight is None else weight.dtype
    return dx.reshape(x.shape), dw.reshape(ns).astype(wdt), db.reshape(ns).astype(wdt)


def batch_norm_forward_cuda(x, weight, bias, running_mean, running_var, training, eps):
    """cuda column of batch_norm_forward: ``channel_stats`` (training) or the running statistics."""
    xp = xp_of(x)
    N, C = x.shape[:2]
    x3 = x.reshape(N, C, -1)  # (N, C, S)
    if training:
        mean, rstd, var = xp.empty(C), xp.empty(C), xp.empty(C)
        channel_stats[C, threads_for(N * x3.shape[2])](x3, float(eps), mean, rstd, var)
    else:
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
        rstd = 1.0 / xp.sqrt(var + eps)
    y = _apply(x3, mean, rstd, weight, bias, 0, 1)
    return y.reshape(x.shape), mean.astype(x.dtype), rstd.astype(x.dtype), var.astype(x.dtype)


def batch_norm_backward_cuda(g, x, mean, rstd, weight=None, training=True):
    """cuda column of batch_norm_backward."""
    N, C = x.shape[:2]
    dx, dw, db = _backward(g.reshape(N, C, -1), x.reshape(N, C, -1), None, None, mean, rstd, weight, 0, 1, 1, 1,
                           training)
    wdt = x.dtype if weight is None else weight.dtype
    return dx.reshape(x.shape), dw.astype(wdt), db.astype(wdt)
