"""Scaled dot-product attention on the GPU (Numba CUDA): the ``cuda`` column of the attention rows.

The CPU twin, with the notation, the reference loops and the FlashAttention-2 backward
formulas, is ``npdiff/kernels/attention.py``: S = s·Q Kᵀ + B, P = softmax_row(S), O = P V,
lse_i = log Σ_j e^{S_ij}; backward from the saved lse: P_ij = e^{S_ij − lse_i},
D_i = dO_i·O_i, dS = P∘(dO Vᵀ − D), dQ = s·dS K, dK = s·dSᵀ Q, dV = Pᵀ dO.
A fully masked row gives O_i = 0, lse_i = −∞ and no gradient.

Shapes: q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv) flattened to N row blocks; bias
(M, Lq, Lk) with bias_index (N,) as in the other columns.

The GPU version (tiled online softmax, FlashAttention-2 style; Dao 2023, Algorithms 1–2):
  * ``flash_forward``: grid (query tiles, N); one thread per query row holds its q row, a
    running max m, sum l and output accumulator in its own scratch (``cuda.local.array``).
    The block walks the keys in tiles of TK rows: its threads copy the K and V tile into
    shared memory together, wait, then each thread scores its row against the tile, takes the
    tile max, rescales l and the accumulator by e^{m_old − m_new} once per tile and adds
    e^{S − m_new}·v. S is never stored: memory O(N·L), whatever L is.
  * ``flash_backward_dq``: the same walk over key tiles per query row, recomputing P from lse:
    dq_i = s·Σ_j P_ij (dO_i·v_j − D_i) k_j.
  * ``flash_backward_dkdv``: one thread per key row walks the query tiles (Q, dO, lse, D in
    shared memory): dv_j = Σ_i P_ij dO_i, dk_j = s·Σ_i dS_ij q_i. Each thread owns its rows
    of dq, or of dk and dv: no atomics, at the price of computing P twice (FlashAttention-2
    instead accumulates dQ with atomics inside the dK/dV pass).
Head widths up to DMAX (= 128; Stable Diffusion's 40–160 all but 160) run here; wider heads
use the xp column (whole-matrix cuBLAS products), the honest choice where a row no longer
fits a thread's scratch.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from .. import attention as _cpu
from .common import kernel, numba_type, threads_for, xp_of

DMAX = 128  # widest head kept in a thread's scratch
TK = 16  # rows of a shared K/V (or Q/dO) tile: 2·TK·DMAX·8 bytes = 32 KiB in float64
TQ = 64  # query (or key) rows per block: one thread each


@functools.lru_cache(maxsize=None)
def _kernels(dtype):
    T = numba_type(dtype)

    @kernel("A3 A3 A3 A3 I1 b t A3 A2", dtype)
    def flash_forward(q, k, v, bias, bias_index, has_bias, scale, out, lse):
        """out (N, Lq, dv), lse (N, Lq): one thread per query row, key tiles in shared memory."""
        kt = cuda.shared.array((TK, DMAX), T)
        vt = cuda.shared.array((TK, DMAX), T)
        qr = cuda.local.array(DMAX, T)
        acc = cuda.local.array(DMAX, T)
        sc = cuda.local.array(TK, T)
        N, Lq, d = q.shape
        Lk, dv = k.shape[1], v.shape[2]
        n = cuda.blockIdx.y
        t = cuda.threadIdx.x
        i = cuda.blockIdx.x * cuda.blockDim.x + t
        row = i < Lq
        if row:
            for c in range(d):
                qr[c] = q[n, i, c]
            for c in range(dv):
                acc[c] = 0
        m = T(-math.inf)
        l = T(0)
        for j0 in range(0, Lk, TK):
            nk = min(TK, Lk - j0)
            for e in range(t, nk * d, cuda.blockDim.x):  # the block copies the tile together
                kt[e // d, e % d] = k[n, j0 + e // d, e % d]
            for e in range(t, nk * dv, cuda.blockDim.x):
                vt[e // dv, e % dv] = v[n, j0 + e // dv, e % dv]
            cuda.syncthreads()
            if row:
                mt = T(-math.inf)  # the tile's max score
                for jj in range(nk):
                    s = T(0)
                    for c in range(d):
                        s += qr[c] * kt[jj, c]
                    s *= scale
                    if has_bias:
                        s += bias[bias_index[n], i, j0 + jj]
                    sc[jj] = s
                    mt = max(mt, s)
                if mt > -math.inf:
                    m_new = max(m, mt)
                    corr = math.exp(m - m_new)  # 0 on the first tile (m = −∞)
                    l *= corr
                    for c in range(dv):
                        acc[c] *= corr
                    for jj in range(nk):
                        p = math.exp(sc[jj] - m_new)
                        l += p
                        for c in range(dv):
                            acc[c] += p * vt[jj, c]
                    m = m_new
            cuda.syncthreads()  # the tile is read by all before the next copy
        if row:
            if l > 0:
                for c in range(dv):
                    out[n, i, c] = acc[c] / l
                lse[n, i] = m + math.log(l)
            else:  # every key masked
                for c in range(dv):
                    out[n, i, c] = 0
                lse[n, i] = -math.inf

    @kernel("A3 A3 A3 A3 A2 A2 A3 I1 b t A3", dtype)
    def flash_backward_dq(g, q, k, v, D, lse, bias, bias_index, has_bias, scale, dq):
        """dq (N, Lq, d): one thread per query row, key tiles in shared memory, P from lse."""
        kt = cuda.shared.array((TK, DMAX), T)
        vt = cuda.shared.array((TK, DMAX), T)
        qr = cuda.local.array(DMAX, T)
        gr = cuda.local.array(DMAX, T)
        acc = cuda.local.array(DMAX, T)
        N, Lq, d = q.shape
        Lk, dv = k.shape[1], v.shape[2]
        n = cuda.blockIdx.y
        t = cuda.threadIdx.x
        i = cuda.blockIdx.x * cuda.blockDim.x + t
        row = i < Lq and lse[n, i] > -math.inf  # a fully masked row has no gradient
        if i < Lq:
            for c in range(d):
                qr[c] = q[n, i, c]
                acc[c] = 0
            for c in range(dv):
                gr[c] = g[n, i, c]
        for j0 in range(0, Lk, TK):
            nk = min(TK, Lk - j0)
            for e in range(t, nk * d, cuda.blockDim.x):
                kt[e // d, e % d] = k[n, j0 + e // d, e % d]
            for e in range(t, nk * dv, cuda.blockDim.x):
                vt[e // dv, e % dv] = v[n, j0 + e // dv, e % dv]
            cuda.syncthreads()
            if row:
                for jj in range(nk):
                    s = T(0)
                    for c in range(d):
                        s += qr[c] * kt[jj, c]
                    s *= scale
                    if has_bias:
                        s += bias[bias_index[n], i, j0 + jj]
                    p = math.exp(s - lse[n, i])
                    dp = T(0)
                    for c in range(dv):
                        dp += gr[c] * vt[jj, c]
                    ds = p * (dp - D[n, i])
                    for c in range(d):
                        acc[c] += ds * kt[jj, c]
            cuda.syncthreads()
        if i < Lq:
            for c in range(d):
                dq[n, i, c] = scale * acc[c]

    @kernel("A3 A3 A3 A3 A2 A2 A3 I1 b t A3 A3", dtype)
    def flash_backward_dkdv(g, q, k, v, D, lse, bias, bias_index, has_bias, scale, dk, dv_out):
        """dk (N, Lk, d), dv (N, Lk, dv): one thread per key row, query tiles in shared memory."""
        qt = cuda.shared.array((TK, DMAX), T)
        gt = cuda.shared.array((TK, DMAX), T)
        kr = cuda.local.array(DMAX, T)
        vr = cuda.local.array(DMAX, T)
        ak = cuda.local.array(DMAX, T)
        av = cuda.local.array(DMAX, T)
        N, Lq, d = q.shape
        Lk, dv = k.shape[1], v.shape[2]
        n = cuda.blockIdx.y
        t = cuda.threadIdx.x
        j = cuda.blockIdx.x * cuda.blockDim.x + t
        col = j < Lk
        if col:
            for c in range(d):
                kr[c] = k[n, j, c]
                ak[c] = 0
            for c in range(dv):
                vr[c] = v[n, j, c]
                av[c] = 0
        for i0 in range(0, Lq, TK):
            nq = min(TK, Lq - i0)
            for e in range(t, nq * d, cuda.blockDim.x):
                qt[e // d, e % d] = q[n, i0 + e // d, e % d]
            for e in range(t, nq * dv, cuda.blockDim.x):
                gt[e // dv, e % dv] = g[n, i0 + e // dv, e % dv]
            cuda.syncthreads()
            if col:
                for ii in range(nq):
                    L = lse[n, i0 + ii]
                    if L > -math.inf:
                        s = T(0)
                        for c in range(d):
                            s += qt[ii, c] * kr[c]
                        s *= scale
                        if has_bias:
                            s += bias[bias_index[n], i0 + ii, j]
                        p = math.exp(s - L)
                        dp = T(0)
                        for c in range(dv):
                            av[c] += p * gt[ii, c]
                            dp += gt[ii, c] * vr[c]
                        ds = p * (dp - D[n, i0 + ii])
                        for c in range(d):
                            ak[c] += ds * qt[ii, c]
            cuda.syncthreads()
        if col:
            for c in range(d):
                dk[n, j, c] = scale * ak[c]
            for c in range(dv):
                dv_out[n, j, c] = av[c]

    return flash_forward, flash_backward_dq, flash_backward_dkdv


def _bias_args(xp, q, bias, bias_index):
    if bias is None:
        return xp.zeros((1, 1, 1), q.dtype), xp.zeros(q.shape[0], np.int64), False
    return bias, xp.asarray(bias_index, dtype=np.int64), True


def _fits(q, v):
    return q.shape[-1] <= DMAX and v.shape[-1] <= DMAX


def attention_forward_cuda(q, k, v, bias=None, bias_index=None, scale=None):
    """cuda column of attention_forward: ``flash_forward`` (the xp column for heads wider than DMAX)."""
    if not _fits(q, v):
        return _cpu.attention_forward_xp(q, k, v, bias, bias_index, scale)
    xp = xp_of(q)
    lead = q.shape[:-1]
    q, k, v = _cpu._flat3(q), _cpu._flat3(k), _cpu._flat3(v)  # (N, L, ·)
    N, Lq = q.shape[:2]
    out = xp.empty((N, Lq, v.shape[2]), q.dtype)
    lse = xp.empty((N, Lq), q.dtype)
    b, bi, has_b = _bias_args(xp, q, bias, bias_index)
    nt = threads_for(min(Lq, TQ))
    _kernels(q.dtype)[0][(-(-Lq // nt), N), nt](q, k, v, b, bi, has_b, q.dtype.type(scale), out, lse)
    return out.reshape(lead + (v.shape[2],)), lse.reshape(lead)


def attention_backward_cuda(g, q, k, v, out, lse, bias=None, bias_index=None, scale=None):
    """cuda column of attention_backward: ``flash_backward_dq`` and ``flash_backward_dkdv``."""
    if not _fits(q, v):
        return _cpu.attention_backward_xp(g, q, k, v, out, lse, bias, bias_index, scale)
    xp = xp_of(q)
    shapes = q.shape, k.shape, v.shape
    g, q, k, v, out = (_cpu._flat3(a) for a in (g, q, k, v, out))  # (N, L, ·)
    N, Lq, Lk = q.shape[0], q.shape[1], k.shape[1]
    lse = lse.reshape(N, Lq)
    D = (g * out).sum(axis=2)  # (N, Lq): D_i = dO_i · O_i
    b, bi, has_b = _bias_args(xp, q, bias, bias_index)
    s = q.dtype.type(scale)
    dq, dk, dv = xp.empty_like(q), xp.empty_like(k), xp.empty_like(v)
    _, k_dq, k_dkdv = _kernels(q.dtype)
    nt = threads_for(min(Lq, TQ))
    k_dq[(-(-Lq // nt), N), nt](g, q, k, v, D, lse, b, bi, has_b, s, dq)
    nt = threads_for(min(Lk, TQ))
    k_dkdv[(-(-Lk // nt), N), nt](g, q, k, v, D, lse, b, bi, has_b, s, dk, dv)
    return tuple(a.reshape(shape) for a, shape in zip((dq, dk, dv), shapes))
