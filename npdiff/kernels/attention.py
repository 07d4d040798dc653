"""Scaled dot-product attention, forward and backward.

Notation (one "row" is one query of one (batch, head) pair):

    N  = batch·heads (all leading axes flattened),  Lq / Lk = query / key length,
    d  = query/key width,  dv = value width,  s = scale (default 1/√d),
    S  = s·Q Kᵀ + B                       scores, (N, Lq, Lk); B = additive mask (0 / −∞ / any float)
    P  = softmax_row(S),  O = P V          (Vaswani et al. 2017, eq. 1)
    lse_i = m_i + log Σ_j exp(S_ij − m_i),  m_i = max_j S_ij   (row log-sum-exp, saved by forward)

Backward (Dao 2023, FlashAttention-2, Algorithm 2): the probabilities are *recomputed* from
the saved row log-sum-exp, P_ij = exp(S_ij − lse_i), so forward keeps O(N·L) memory, then

    dV = Pᵀ dO,   dP = dO Vᵀ,   D_i = Σ_c dO_ic O_ic  (= rowsum(P∘dP)),
    dS = P ∘ (dP − D),   dQ = s·dS K,   dK = s·dSᵀ Q.

Max subtraction makes every exp argument ≤ 0, so huge logits (1e30) are exact. A row whose
keys are all masked (every S_ij = −∞) gives O_i = 0, lse_i = −∞ and zero gradients (torch's
convention).

Layout taken by every column (reference, numba, xp; registered in ``table.py``, validated once
by ``checks.attention_forward``): q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv), flattened
inside to N = prod(...) row blocks; the mask as ``bias`` (M, Lq, Lk) plus ``bias_index`` (N,)
naming which of the M bias planes row-block n uses (so a (B, 1, Lq, Lk) mask shared by all
heads is never copied h times).

Fast CPU path — why tiles and not "one big batched GEMM": materialising S for all heads is
N·Lq·Lk floats (134 MB for B=32, h=16, L=256; fresh buffers that large page-fault) and
numpy's stacked matmul calls one small GEMM per head, too small to use both cores. Instead a Numba kernel is parallel over (head, query tile)
with TQ = 64 query rows, walks the keys in tiles of TK = 128 and keeps a running max / sum
per row (online softmax, Milakov & Gimelshein 2018; Dao 2023): at most TQ·TK scores exist
per thread, whatever L is.

*Crossover.* For Lk ≤ TK (= 128) there is a single key tile: the kernel is exactly "GEMM,
row softmax, GEMM" with no rescaling. For Lk > TK each new key tile rescales the running
output by exp(m_old − m_new) — O(TQ·dv) extra work per tile, negligible next to the
O(TQ·TK·d) products — so the same kernel serves L = 64 and L = 4096 with a fixed
TQ·TK·4 bytes = 32 KiB score tile that stays in L1/L2. The small-head forward and both backwards
hold their score tiles *transposed*, (key, query), so that everything per query — the running max,
the shift, the exponential, the row sum, the rescaling — is a map over contiguous query lanes, which
LLVM vectorises; along a row those would be reductions (max, sum), which stay scalar without
fast-math reassociation (measured 0.42 ns per score for the row max alone, against 0.03 as a
lane map, at L = 4096). The BLAS forward instead keeps S row-major and needs no max pass: a *lazy
shift* (``attention_forward_tiled``) accepts a row's tile against its current shift while the row's
exponentials sum to at most 2¹⁶, and the one reduction left, that sum, is compiled with ``reassoc``
(``_row_sum_prefix``, ``jit_reduce``). The tile products are:
  * d > 16: BLAS sgemm on the tiles (``np.dot`` inside Numba; OpenBLAS is held to one thread
    around the call so the two levels of threads do not fight): S = qs k_jᵀ, and O += P V with
    microgemm's register-blocked loops on AVX-512 hosts (accumulating in place; sgemm elsewhere);
    in the backward the five FlashAttention-2 products with the transposes as BLAS flags;
  * d ≤ 16 (diffusers' UNet uses d = 8): direct loops (``attention_forward_direct``) — a K = 8
    GEMM spends its time packing, while with transposed tiles every step is a vectorised
    axpy / max / exp over contiguous query lanes: Sᵀ[j, :] = Σ_c k[j, c]·qᵀ[c, :],
    Oᵀ[c, :] += v[j, c]·Pᵀ[j, :] (``_axpys_lanes``, ``_rank1_lanes``: 2-D indexing, no row views,
    whose reference counting cost as much as the arithmetic). Its backward works on (query, key)
    tiles along the keys and transposes dS once per tile (rows padded by PAD floats, so the
    column walk does not land in one cache set) for dQ.
The exponential is a vectorisable Cody–Waite + degree-7 polynomial in float32 (numba has no
vector exp without SVML), inlined into the pass that shifts and sums (``vexp``: one pass over a
tile instead of four); float64 uses math.exp.

Backward is parallel over N (each task owns dQ[n], dK[n], dV[n]: no races, no per-thread
reductions); inside, key tiles outer and query tiles inner as in FlashAttention-2. With
fewer (batch·head) pairs than threads, a core idles in the backward.

GPU twin: ``npdiff/kernels/cuda/attention.py`` (the table's ``cuda`` column: tiled online
softmax, FlashAttention-2 style, forward and backward).
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from .config import blas_single_thread, jit_contract, jit_helper, jit_inline, jit_reduce, jit_serial, num_threads, parallel_for
from .microgemm import gemm as _own_gemm
from .microgemm import LANES as MICRO_LANES
from .microgemm import host_has_avx512
from .vexp import exp_constants as _exp_constants
from .vexp import vexp as _vexp

TILE_Q = 64
TILE_K = 128
SMALL_HEAD_DIM = 16
PAD = 16  # floats added to the rows of tiles that are read or written down a column
# The BLAS path (d > SMALL_HEAD_DIM) takes tiles BLAS_TILE_SCALE times larger on each side, 256 × 512
# (a 512 KiB score tile, within a core's L2; the forward's query tile twice that, ``_tiles``): fewer,
# larger sgemms and fewer rescalings. Measured on
# one thread, CPU time, d = 64, the kernels called directly on a loaded machine (load average 12):
# L = 4096 forward 130 → 104 ms, backward 266 → 213 ms; L = 256 forward 8.7 → 7.2 ms, backward
# 16.9 → 13.9 ms. ``_tiles`` shrinks the query tile again while there would be fewer than two
# tasks per thread.
BLAS_TILE_SCALE = 4


# ---------------------------------------------------------------------------
# reference (plain loops: the version to read)


def _flat3(a):
    """(..., L, c) -> (N, L, c), N = prod(...) (a view of a contiguous array)."""
    return a.reshape((-1,) + a.shape[-2:])


def attention_forward_reference(q, k, v, bias=None, bias_index=None, scale=None):
    """Reference forward.

    Shapes: q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv); bias None or (M, Lq, Lk) with
    bias_index (N,) naming the plane each of the N = prod(...) rows uses -> out (..., Lq, dv),
    lse (..., Lq).
    Definition: S_ij = s·Σ_c q_ic k_jc + b_ij; O_ic = Σ_j exp(S_ij − lse_i) v_jc.
    Loop: for each (n, i) form the score row, subtract its max, exponentiate, normalise,
    and take the weighted sum of value rows.
    """
    q3, k3, v3 = _flat3(q), _flat3(k), _flat3(v)
    N, Lq, d = q3.shape
    Lk, dv = k3.shape[1], v3.shape[2]
    s = 1.0 / math.sqrt(d) if scale is None else scale
    out = np.zeros((N, Lq, dv), dtype=q.dtype)
    lse = np.full((N, Lq), -np.inf, dtype=q.dtype)
    for n in range(N):
        for i in range(Lq):
            row = np.array([s * sum(q3[n, i, c] * k3[n, j, c] for c in range(d)) for j in range(Lk)])
            if bias is not None:
                row = row + bias[bias_index[n], i]
            m = row.max()
            if m == -np.inf:  # every key masked: O_i = 0
                continue
            p = np.exp(row - m)
            l = p.sum()
            lse[n, i] = m + np.log(l)
            for c in range(dv):
                out[n, i, c] = sum(p[j] * v3[n, j, c] for j in range(Lk)) / l
    return out.reshape(q.shape[:-1] + (dv,)), lse.reshape(q.shape[:-1])


def attention_backward_reference(g, q, k, v, out, lse, bias=None, bias_index=None, scale=None):
    """Reference backward: (dq, dk, dv) for upstream gradient ``g`` (..., Lq, dv).

    Derived by the chain rule over the reference forward's loops, recomputing that forward
    (``out`` and ``lse`` are not used): an independent route to the fast paths'
    FlashAttention closed form dS = P∘(dP − D), D_i = g_i·O_i. Per row (n, i), forward:
        S_j = s Σ_c q_ic k_jc + b_ij,  m = max_j S_j,  p_j = e^{S_j − m},  l = Σ_j p_j,
        O_c = Σ_j p_j v_jc / l,
    and backwards, node by node:
        v̄_jc += g_c p_j / l                    (O through v)
        p̄_j   = Σ_c g_c v_jc / l               (O through p_j)
        l̄     = −Σ_c g_c Σ_j p_j v_jc / l²      (O through l)
        p̄_j  += l̄                             (l = Σ p)
        S̄_j   = p̄_j p_j,   m̄ = −Σ_j p̄_j p_j   (p_j = e^{S_j − m})
        S̄_j* += m̄ for the first arg-max j*    (m = max S; m̄ is 0 in exact arithmetic)
        q̄_ic += s Σ_j S̄_j k_jc,   k̄_jc += s S̄_j q_ic.
    A fully masked row (m = −∞) has O = 0 whatever q, k, v: no gradient.
    """
    q3, k3, v3, g3 = _flat3(q), _flat3(k), _flat3(v), _flat3(g)
    N, Lq, d = q3.shape
    Lk, dvw = k3.shape[1], v3.shape[2]
    s = 1.0 / math.sqrt(d) if scale is None else scale
    dq, dk, dv = (np.zeros(a.shape, np.float64) for a in (q3, k3, v3))
    for n in range(N):
        for i in range(Lq):
            S = [s * sum(float(q3[n, i, c]) * float(k3[n, j, c]) for c in range(d))
                 + (0.0 if bias is None else float(bias[bias_index[n], i, j])) for j in range(Lk)]
            m = max(S)
            if m == -math.inf:
                continue
            jstar = S.index(m)
            p = [math.exp(Sj - m) for Sj in S]
            l = sum(p)
            gi = [float(a) for a in g3[n, i]]
            pbar = [0.0] * Lk
            lbar = 0.0
            for j in range(Lk):
                for c in range(dvw):
                    dv[n, j, c] += gi[c] * p[j] / l
                    pbar[j] += gi[c] * v3[n, j, c] / l
                    lbar -= gi[c] * p[j] * v3[n, j, c] / (l * l)
            Sbar = [(pbar[j] + lbar) * p[j] for j in range(Lk)]
            Sbar[jstar] += -sum((pbar[j] + lbar) * p[j] for j in range(Lk))
            for j in range(Lk):
                for c in range(d):
                    dq[n, i, c] += s * Sbar[j] * k3[n, j, c]
                    dk[n, j, c] += s * Sbar[j] * q3[n, i, c]
    return tuple(a.astype(q.dtype).reshape(shape) for a, shape in ((dq, q.shape), (dk, k.shape), (dv, v.shape)))


# ---------------------------------------------------------------------------
# fast CPU path (Numba)


@jit_helper
def _exp_shift_row(x, n, shift, C, fast):
    """x[t] ← exp(x[t] − shift) for t < n, in place (one pass, ``vexp`` inlined)."""
    for t in range(n):
        x[t] = _vexp(x[t] - shift, C, fast)


@jit_helper
def _exp_shift_lanes(ST, nk, nq, shift, l, C, fast):
    """ST[j, i] ← exp(ST[j, i] − shift[i]) for j < nk, i < nq, and l[i] += Σ_j ST[j, i] (l None: no sum).

    One pass over a transposed (key, query) tile: every operation is a map over contiguous query
    lanes, so the shift, the exponential (``vexp``, inlined) and the row sums vectorise together."""
    for j in range(nk):
        for i in range(nq):
            e = _vexp(ST[j, i] - shift[i], C, fast)
            ST[j, i] = e
            l[i] += e


@jit_helper
def _add_bias_transposed(ST, biasT, plane, i0, nq, j0, nk):
    """ST[j, i] += biasT[plane, j0 + j, i0 + i]: the mask transposed once per call (``_bias_args``), so
    that it is read along the query lanes too."""
    for j in range(nk):
        for i in range(nq):
            ST[j, i] += biasT[plane, j0 + j, i0 + i]


# The BLAS forward's lazy shift: a row's tile is accepted with its current shift m_i (not the running
# max) when Σ_j e^{min(S_ij − m_i, 87)} ≤ LAZY_SUM_LIMIT; see ``attention_forward_tiled``.
LAZY_SUM_LIMIT = 2.0**16


@jit_contract
def _exp_shift_row_clamped(S, i, nk, shift, hi, C, fast):
    """S[i, j] ← exp(min(S[i, j] − shift, hi)) for j < nk, in place (one vectorised pass along the row;
    ``hi`` = 87 keeps ``vexp``'s 2^k inside float32's exponent range for any positive argument)."""
    for j in range(nk):
        S[i, j] = _vexp(min(S[i, j] - shift, hi), C, fast)


@jit_reduce
def _row_sum_prefix(S, i, nk):
    """Σ_{j<nk} S[i, j] in S's dtype, reassociated into vector partial sums (``jit_reduce``)."""
    t = S[i, 0]
    for j in range(1, nk):
        t += S[i, j]
    return t


@jit_helper
def _row_max_prefix(S, i, nk):
    """max_{j<nk} S[i, j] (scalar loop: only on a tile's first finite row or after a rejected shift)."""
    mx = S[i, 0]
    for j in range(1, nk):
        mx = max(mx, S[i, j])
    return mx


@jit_serial
def attention_forward_tiled(lo, hi, q, k, v, bias, bias_index, has_bias, scale, out, lse, tq, tk, C, fast, own_pv):
    """Tiled online-softmax forward with BLAS tile products (d > SMALL_HEAD_DIM), parallel
    over (n, query tile); fills ``out`` and ``lse``. The mask comes as it is, bias (M, Lq, Lk).

    Per task: qs = s·q[n, i0:i0+tq]; for each key tile the scores S = qs k_tileᵀ (+ bias) (sgemm,
    (nq, nk), row-major: the P V sgemm below then reads P untransposed, 360 against 415 ms of the
    L = 4096 case's 34 GFLOP with the transposed operand, one thread). Each row is then shifted
    *lazily* (FlashAttention-3's idea, Shah et al. 2024, §3.3, with an acceptance test instead of a
    threshold on the max): with m_i the row's current shift,

        e_ij = exp(min(S_ij − m_i, 87)),   accepted when  Σ_j e_ij ≤ T = LAZY_SUM_LIMIT = 2¹⁶.

    Every e_ij ≥ 0, so acceptance bounds each term: e_ij ≤ T, i.e. S_ij ≤ m_i + ln T (the clamp
    at 87 < ln(float32 max) ≈ 88.7 keeps every term finite, so an inf or a clamped term can only
    reject). Accepted: l_i += Σ_j e_ij and the row needs no max pass and no rescaling. Rejected
    (a new larger max, rare after the first tiles): the row's scores are recomputed (a dot per
    key: the exp overwrote them), m' = max(m_i, max_j S_ij), α = e^{m_i − m'}, l_i and acc_i scale
    by α, and e_ij = e^{S_ij − m'} ≤ 1. A row with no shift yet (m_i = −∞: its first tile, or
    every key so far masked) takes m_i = S_i0 when finite: that term is e⁰ = 1, so l_i ≥ 1 and no
    underflow can empty the row; else the row max (a row with every key of the tile masked adds
    P = 0). Bounds: each tile adds at most T to l_i, so l_i ≤ ⌈Lk/tk⌉·T and |acc_ic| ≤ l_i·max|v|
    (float32: finite for ⌈Lk/tk⌉·max|v| < 5e33); lse_i = m_i + log l_i and O_i = acc_i / l_i are
    the same quantities whatever shift m_i they were accumulated against. The exponential's pass is
    compiled with ``contract`` (``jit_contract``: vexp's Cody–Waite steps and polynomial as fused
    multiply-adds, one rounding each instead of two): 0.38 → 0.25 ns per score, one thread. Then
    acc += P V: with ``own_pv`` (AVX-512 host, dv a multiple of 32) microgemm's register-blocked
    loops add into acc in place, else sgemm into tmp and a pass acc += tmp.
    Finally O = acc / l, lse = m + log l; l_i = 0 (every key masked) gives O_i = 0, lse_i = −∞.
    Test: tests/kernels/test_attention.py::test_lazy_shift_matches_float64.

    Measured (``benchmarks/kernels.py --only attention --clock cpu --threads 1``, CPU time, OpenBLAS
    SkylakeX, load 1.4-3.2, main → this kernel, ms; torch beside): L = 4096, d = 64 forward 912 → 768-779
    (torch 830-866: ratio 1.08 → 0.89-0.94); L = 256, d = 64 forward 31.4 → 27.0-32.5 (ratio 0.94 →
    0.90-0.92). In steps, L = 4096 one thread: row-major tiles with the lazy shift 948 → 854 ms (load
    2.6-5), the contracted exp and 512-query tiles → 803-838, microgemm's P V → 768-779. Wall, 2 threads,
    load 0.7-1.9: L = 4096 475 / 459 → 382 / 387 ms (ratio 1.04 / 1.05 → 0.88 / 0.90), L = 256 17.1 /
    15.9 → 13.9 / 13.8 ms (0.88 → 0.78 / 0.77) (docs/kernels.md, Attention).
    """
    for task in range(lo, hi):  # parallel_for's share of the tasks
        Lq, d = q.shape[1], q.shape[2]
        Lk, dv = k.shape[1], v.shape[2]
        nqt = (Lq + tq - 1) // tq
        n = task // nqt
        i0 = (task % nqt) * tq
        nq = min(tq, Lq - i0)
        qs = np.empty((tq, d), q.dtype)
        for i in range(nq):
            for c in range(d):
                qs[i, c] = q[n, i0 + i, c] * scale
        sbuf = np.empty(tq * tk, q.dtype)
        m = np.full(tq, -np.inf, q.dtype)
        l = np.zeros(tq, q.dtype)
        acc = np.zeros((tq, dv), q.dtype)
        tmp = np.empty((tq, dv), q.dtype)
        hi_arg = -C.cut  # 87
        for j0 in range(0, Lk, tk):
            nk = min(tk, Lk - j0)
            S = sbuf[: nq * nk].reshape((nq, nk))  # (nq, nk) contiguous
            # 1. scores S = qs · k_tileᵀ (+ bias)
            np.dot(qs[:nq], k[n, j0 : j0 + nk].T, S)
            if has_bias:
                pl = bias_index[n]
                for i in range(nq):
                    for j in range(nk):
                        S[i, j] += bias[pl, i0 + i, j0 + j]
            # 2. per row: P_ij = e^{S_ij − m_i} with the lazy shift, l_i += Σ_j P_ij
            for i in range(nq):
                sh = m[i]
                if sh == -np.inf:  # no shift yet: a term of the row, else its max
                    sh = S[i, 0] if S[i, 0] != -np.inf else _row_max_prefix(S, i, nk)
                    if sh == -np.inf:  # every key of this tile masked for this query: P = 0
                        for j in range(nk):
                            S[i, j] = 0
                        continue
                    m[i] = sh
                _exp_shift_row_clamped(S, i, nk, sh, hi_arg, C, fast)
                t = _row_sum_prefix(S, i, nk)
                if not t <= LAZY_SUM_LIMIT:  # rejected (t may be inf): recompute the row, shift by its max
                    for j in range(nk):
                        a = qs[i, 0] * k[n, j0 + j, 0]
                        for c in range(1, d):
                            a += qs[i, c] * k[n, j0 + j, c]
                        S[i, j] = a + bias[bias_index[n], i0 + i, j0 + j] if has_bias else a
                    m_new = max(sh, _row_max_prefix(S, i, nk))
                    alpha = math.exp(sh - m_new)
                    l[i] *= alpha
                    for c in range(dv):
                        acc[i, c] *= alpha
                    m[i] = m_new
                    _exp_shift_row_clamped(S, i, nk, m_new, hi_arg, C, fast)
                    t = _row_sum_prefix(S, i, nk)
                l[i] += t
            # 3. acc += P V_tile: the register-blocked loops accumulate in place (AVX-512 hosts: see
            #    ``attention_forward_numba``); else sgemm into tmp, then acc += tmp
            if own_pv:
                _own_gemm(S, v[n, j0 : j0 + nk], acc[:nq], not own_pv, own_pv)  # trans_a False, accumulate True
            else:
                np.dot(S, v[n, j0 : j0 + nk], tmp[:nq])
                for i in range(nq):
                    for c in range(dv):
                        acc[i, c] += tmp[i, c]
        for i in range(nq):
            if l[i] == 0:
                lse[n, i0 + i] = -np.inf
                out[n, i0 + i] = 0
                continue
            lse[n, i0 + i] = m[i] + math.log(l[i])
            inv = 1 / l[i]
            for c in range(dv):
                out[n, i0 + i, c] = acc[i, c] * inv


@jit_inline
def _axpys_lanes(out, r, W, jw, X, nl):
    """out[r, :nl] = Σ_c W[jw, c]·X[c, :nl] (c < X.shape[0]), four terms per pass over the lanes.

    Plain 2-D indexing, no row views: a view made inside the loop takes and drops a reference
    (an atomic add) on its array's memory record, which at d = 8 cost as much as the arithmetic
    (the small-head forward went from 46 to 38 ms on the benchmark's d = 8 case, one thread)."""
    d = X.shape[0]
    for i in range(nl):
        out[r, i] = 0
    c = 0
    while c + 4 <= d:
        w0, w1, w2, w3 = W[jw, c], W[jw, c + 1], W[jw, c + 2], W[jw, c + 3]
        for i in range(nl):
            out[r, i] += (w0 * X[c, i] + w1 * X[c + 1, i]) + (w2 * X[c + 2, i] + w3 * X[c + 3, i])
        c += 4
    while c < d:
        wc = W[jw, c]
        for i in range(nl):
            out[r, i] += wc * X[c, i]
        c += 1


@jit_inline
def _rank1_lanes(acc, W, jw, P, r, nl):
    """acc[c, :nl] += W[jw, c]·P[r, :nl] for every c < acc.shape[0] (2-D indexing, no views). (Four rows
    of acc per pass over P[r] measured slower: the compiler cannot rule out that they overlap P.)"""
    for c in range(acc.shape[0]):
        wc = W[jw, c]
        for i in range(nl):
            acc[c, i] += wc * P[r, i]


@jit_serial
def attention_forward_direct(lo, hi, q, k, v, biasT, bias_index, has_bias, scale, out, lse, tq, tk, C, fast):
    """Small-head forward (d ≤ SMALL_HEAD_DIM; the mask transposed, biasT (M, Lk, Lq)): the same tiling, but every product is a loop
    along the *query* axis of transposed tiles, so nothing is reduced along a row:

        Sᵀ[j, :] = Σ_c k[j, c]·qsᵀ[c, :]        (qsᵀ: (d, tq), built once per task)
        m'[:] = max(m, max_j Sᵀ[j, :]),  Pᵀ[j, :] = exp(Sᵀ[j, :] − m'),  l[:] = α·l + Σ_j Pᵀ[j, :]
        Oᵀ[c, :] = α·Oᵀ[c, :] + Σ_j v[j, c]·Pᵀ[j, :]

    Each inner loop is an axpy / max / exp over tq = 64 contiguous query lanes, which the
    compiler vectorises; with d = 8 that beats a K = 8 GEMM, whose time goes to packing.
    """
    for task in range(lo, hi):  # parallel_for's share of the tasks
        Lq, d = q.shape[1], q.shape[2]
        Lk, dv = k.shape[1], v.shape[2]
        nqt = (Lq + tq - 1) // tq
        n = task // nqt
        i0 = (task % nqt) * tq
        nq = min(tq, Lq - i0)
        kn, vn = k[n], v[n]  # (Lk, d), (Lk, dv): views made once per task
        qsT = np.empty((d, tq), q.dtype)
        for i in range(nq):
            for c in range(d):
                qsT[c, i] = q[n, i0 + i, c] * scale
        ST = np.empty((tk, tq), q.dtype)
        m = np.full(tq, -np.inf, q.dtype)
        mt = np.empty(tq, q.dtype)
        alpha = np.empty(tq, q.dtype)
        l = np.zeros(tq, q.dtype)
        accT = np.zeros((dv, tq), q.dtype)  # Oᵀ
        for j0 in range(0, Lk, tk):
            nk = min(tk, Lk - j0)
            # 1. Sᵀ = k_tile · qsᵀ (+ biasᵀ), and the running max m'
            for i in range(nq):
                mt[i] = m[i]
            for j in range(nk):
                _axpys_lanes(ST, j, kn, j0 + j, qsT, nq)
                if has_bias:
                    pl = bias_index[n]
                    for i in range(nq):
                        ST[j, i] += biasT[pl, j0 + j, i0 + i]
                for i in range(nq):
                    mt[i] = max(mt[i], ST[j, i])
            # 2. α = e^{m − m'} (rows still fully masked keep α = 1 and add nothing)
            for i in range(nq):
                if mt[i] == -np.inf:
                    alpha[i] = 1
                    mt[i] = 0  # exp(−∞ − 0) = 0 below
                else:
                    alpha[i] = math.exp(m[i] - mt[i])
                    m[i] = mt[i]
                l[i] *= alpha[i]
            for c in range(dv):
                a = accT[c]
                for i in range(nq):
                    a[i] *= alpha[i]
            # 3. Pᵀ[j, :] = exp(Sᵀ[j, :] − m'), l += Σ_j Pᵀ[j, :] (one pass), Oᵀ += v_jᵀ Pᵀ[j, :]
            _exp_shift_lanes(ST, nk, nq, mt, l, C, fast)
            for j in range(nk):
                _rank1_lanes(accT, vn, j0 + j, ST, j, nq)
        for i in range(nq):
            if l[i] == 0:
                lse[n, i0 + i] = -np.inf
                out[n, i0 + i] = 0
                continue
            lse[n, i0 + i] = m[i] + math.log(l[i])
            inv = 1 / l[i]
            for c in range(dv):
                out[n, i0 + i, c] = accT[c, i] * inv


@jit_serial
def attention_backward_blas(lo, hi, g, q, k, v, D, lse, biasT, bias_index, has_bias, scale, dq, dk, dv, tq, tk, C,
                            fast):
    """FlashAttention-2 backward with sgemm tile products (d > SMALL_HEAD_DIM), row blocks n in [lo, hi);
    fills dq, dk, dv.

    For each key tile j (outer) and query tile i (inner), on transposed (key, query) tiles as in the
    forward: Sᵀ = k_j qsᵀ (+ biasᵀ), Pᵀ = exp(Sᵀ − lse_i) (one vectorised pass along the query lanes),
    dV_j += Pᵀ g_i, dPᵀ = v_j g_iᵀ, dSᵀ = Pᵀ∘(dPᵀ − D_i), dK_j += dSᵀ qs (qs = s·q_i),
    dQ_i += s·(dSᵀ)ᵀ k_j: five sgemms, the transposes BLAS flags. The mask comes transposed, biasT (M, Lk, Lq). The BLAS and the direct
    (small-head) backward are two kernels, so a run compiles only the one its head width uses.
    """
    for n in range(lo, hi):  # parallel_for's share of the tasks
        Lq, d = q.shape[1], q.shape[2]
        Lk, dvw = k.shape[1], v.shape[2]
        qs = np.empty((tq, d), q.dtype)
        sbuf = np.empty(tk * tq, q.dtype)
        pbuf = np.empty(tk * tq, q.dtype)
        shift = np.empty(tq, q.dtype)
        lsum = np.zeros(tq, q.dtype)  # the exp pass's row sums (not needed here: l is in lse)
        dkacc = np.empty((tk, d), q.dtype)
        dvacc = np.empty((tk, dvw), q.dtype)
        tvbuf = np.empty(tk * dvw, q.dtype)
        tqbuf = np.empty(tq * d, q.dtype)
        tkbuf = np.empty(tk * d, q.dtype)
        dq[n] = 0
        for j0 in range(0, Lk, tk):
            nk = min(tk, Lk - j0)
            dkacc[:] = 0
            dvacc[:] = 0
            kj = k[n, j0 : j0 + nk]
            for i0 in range(0, Lq, tq):
                nq = min(tq, Lq - i0)
                PT = sbuf[: nk * nq].reshape((nk, nq))
                dPT = pbuf[: nk * nq].reshape((nk, nq))
                # 1. Pᵀ = exp(Sᵀ − lse) (S recomputed, as in the forward; a fully masked query has
                #    lse = −∞ and P = 0: shift +∞ sends every score, finite or −∞, to e^{−∞} = 0)
                for i in range(nq):
                    qs_i = qs[i]
                    for c in range(d):
                        qs_i[c] = q[n, i0 + i, c] * scale
                    li = lse[n, i0 + i]
                    shift[i] = li if li != -np.inf else np.inf
                np.dot(kj, qs[:nq].T, PT)
                if has_bias:
                    _add_bias_transposed(PT, biasT, bias_index[n], i0, nq, j0, nk)
                _exp_shift_lanes(PT, nk, nq, shift, lsum, C, fast)
                gi = g[n, i0 : i0 + nq]
                # 2. dV_j += Pᵀ g_i ; dPᵀ = v_j g_iᵀ
                tv = tvbuf[: nk * dvw].reshape((nk, dvw))
                np.dot(PT, gi, tv)
                for j in range(nk):
                    for c in range(dvw):
                        dvacc[j, c] += tv[j, c]
                np.dot(v[n, j0 : j0 + nk], gi.T, dPT)
                # 3. dSᵀ = Pᵀ ∘ (dPᵀ − D)   (stored in dPᵀ; D along the query lanes)
                for j in range(nk):
                    prow = PT[j]
                    drow = dPT[j]
                    for i in range(nq):
                        drow[i] = prow[i] * (drow[i] - D[n, i0 + i])
                # 4. dK_j += dSᵀ qs (qs carries s) ; dQ_i += s·dS k_j
                tk_ = tkbuf[: nk * d].reshape((nk, d))
                np.dot(dPT, qs[:nq], tk_)
                for j in range(nk):
                    for c in range(d):
                        dkacc[j, c] += tk_[j, c]
                tmpq = tqbuf[: nq * d].reshape((nq, d))
                np.dot(dPT.T, kj, tmpq)
                for i in range(nq):
                    for c in range(d):
                        dq[n, i0 + i, c] += scale * tmpq[i, c]
            for j in range(nk):
                for c in range(d):
                    dk[n, j0 + j, c] = dkacc[j, c]
                for c in range(dvw):
                    dv[n, j0 + j, c] = dvacc[j, c]


@jit_serial
def attention_backward_direct(lo, hi, g, q, k, v, D, lse, bias, bias_index, has_bias, scale, dq, dk, dv, tq, tk, C,
                              fast):
    """The same backward for small heads (d ≤ SMALL_HEAD_DIM), row blocks n in [lo, hi): the K = d tile
    products are axpys along the keys (S, dVᵀ, dP, dKᵀ: ``_axpys_lanes`` / ``_rank1_lanes`` on the
    (query, key) tile) and, on dS transposed once per tile, along the queries (dQᵀ)."""
    for n in range(lo, hi):  # parallel_for's share of the tasks
        Lq, d = q.shape[1], q.shape[2]
        Lk, dvw = k.shape[1], v.shape[2]
        qn, kn, vn, gn = q[n], k[n], v[n], g[n]  # views made once per task
        qs = np.empty((tq, d), q.dtype)
        # rows padded by PAD so that walking a column (the transpose below) does not hit one cache set
        S = np.empty((tq, tk + PAD), q.dtype)  # P, (query, key) tiles
        dP = np.empty((tq, tk + PAD), q.dtype)  # dP, then dS
        kT = np.empty((d, tk), q.dtype)
        ks = np.empty((tk, d), q.dtype)  # s·k_j
        vT = np.empty((dvw, tk), q.dtype)
        dST = np.empty((tk, tq + PAD), q.dtype)
        dKT = np.empty((d, tk), q.dtype)
        dVT = np.empty((dvw, tk), q.dtype)
        dQT = np.zeros(((Lq + tq - 1) // tq, d, tq), q.dtype)  # dQᵀ per query tile
        for j0 in range(0, Lk, tk):
            nk = min(tk, Lk - j0)
            dKT[:] = 0
            dVT[:] = 0
            for j in range(nk):
                for c in range(d):
                    kT[c, j] = kn[j0 + j, c]
                    ks[j, c] = kn[j0 + j, c] * scale
                for c in range(dvw):
                    vT[c, j] = vn[j0 + j, c]
            for i0 in range(0, Lq, tq):
                nq = min(tq, Lq - i0)
                for i in range(nq):
                    for c in range(d):
                        qs[i, c] = qn[i0 + i, c] * scale
                # 1. P = exp(S − lse) (S = qs k_jᵀ (+ bias) recomputed; a fully masked query has
                #    lse = −∞ and P = 0: shift +∞ sends every score, finite or −∞, to e^{−∞} = 0)
                for i in range(nq):
                    _axpys_lanes(S, i, qs, i, kT, nk)
                    if has_bias:
                        pl = bias_index[n]
                        for j in range(nk):
                            S[i, j] += bias[pl, i0 + i, j0 + j]
                    li = lse[n, i0 + i]
                    sh = li if li != -np.inf else -li  # +∞ in lse's dtype (vexp's float32 arithmetic needs float32)
                    _exp_shift_row(S[i], nk, sh, C, fast)  # a helper: its loop is unswitched on fast and vectorised
                # 2. dVᵀ_j += gᵀ P ; dP = g_i v_jᵀ ; 3. dS = P ∘ (dP − D)  (stored in dP)
                for i in range(nq):
                    _rank1_lanes(dVT, gn, i0 + i, S, i, nk)
                    _axpys_lanes(dP, i, gn, i0 + i, vT, nk)
                    Di = D[n, i0 + i]
                    for j in range(nk):
                        dP[i, j] = S[i, j] * (dP[i, j] - Di)
                # 4. dKᵀ_j += qsᵀ dS (qs carries s) ; dQᵀ_i += (s·k_j)ᵀ dSᵀ
                for i in range(nq):
                    _rank1_lanes(dKT, qs, i, dP, i, nk)
                for i in range(nq):
                    for j in range(nk):
                        dST[j, i] = dP[i, j]
                dQt = dQT[i0 // tq]  # (d, tq): this query tile's dQᵀ
                for j in range(nk):
                    _rank1_lanes(dQt, ks, j, dST, j, nq)
            for j in range(nk):
                for c in range(d):
                    dk[n, j0 + j, c] = dKT[c, j]
                for c in range(dvw):
                    dv[n, j0 + j, c] = dVT[c, j]
        for i in range(Lq):
            for c in range(d):
                dq[n, i, c] = dQT[i // tq, c, i % tq]


# ---------------------------------------------------------------------------
# xp-generic vectorised version (cupy on a GPU; also runs with numpy)


def _broadcast_bias(xp, bias, bias_index):
    return None if bias is None else bias[xp.asarray(bias_index)]  # (N, Lq, Lk)


def attention_forward_xp(q, k, v, bias=None, bias_index=None, scale=None):
    """Whole-matrix version: S = s·Q Kᵀ + B (N, Lq, Lk) with batched matmul, then a
    max-subtracted softmax and P V. Materialises S — fine on a GPU, the tiled kernel is
    the CPU path."""
    lead = q.shape[:-1]
    q, k, v = _flat3(q), _flat3(k), _flat3(v)  # (N, L, d)
    xp = get_array_module(q)
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    S = xp.matmul(q * q.dtype.type(s), xp.swapaxes(k, 1, 2))  # (N, Lq, Lk)
    if bias is not None:
        S = S + _broadcast_bias(xp, bias, bias_index)
    m = S.max(axis=2, keepdims=True)  # (N, Lq, 1)
    m = xp.where(xp.isfinite(m), m, 0)  # fully masked rows: exp(−∞ − 0) = 0
    P = xp.exp(S - m)
    l = P.sum(axis=2, keepdims=True)
    safe = xp.where(l > 0, l, 1)
    out = xp.matmul(P / safe, v)
    with np.errstate(divide="ignore"):
        lse = xp.where(l > 0, m + xp.log(safe), -xp.inf)[..., 0]
    return out.astype(q.dtype, copy=False).reshape(lead + (v.shape[2],)), lse.astype(q.dtype, copy=False).reshape(lead)


def attention_backward_xp(g, q, k, v, out, lse, bias=None, bias_index=None, scale=None):
    """Whole-matrix backward from the saved lse (same formulas as the tiled kernel)."""
    shapes = q.shape, k.shape, v.shape
    g, q, k, v, out = (_flat3(a) for a in (g, q, k, v, out))  # (N, L, ·)
    lse = lse.reshape(q.shape[:2])  # (N, Lq)
    xp = get_array_module(q)
    s = q.dtype.type(1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    S = xp.matmul(q * s, xp.swapaxes(k, 1, 2))  # (N, Lq, Lk)
    if bias is not None:
        S = S + _broadcast_bias(xp, bias, bias_index)
    finite = xp.isfinite(lse)[..., None]
    P = xp.where(finite, xp.exp(S - xp.where(finite, lse[..., None], 0)), 0)
    dv = xp.matmul(xp.swapaxes(P, 1, 2), g)  # (N, Lk, dv)
    dP = xp.matmul(g, xp.swapaxes(v, 1, 2))  # (N, Lq, Lk)
    D = (g * out).sum(axis=2, keepdims=True)  # (N, Lq, 1)
    dS = P * (dP - D)
    dq = xp.matmul(dS, k) * s
    dk = xp.matmul(xp.swapaxes(dS, 1, 2), q) * s
    return tuple(a.astype(q.dtype, copy=False).reshape(shape) for a, shape in zip((dq, dk, dv), shapes))


# ---------------------------------------------------------------------------
# the numba column (the arguments arrive checked and C-contiguous, scale a float)


def _bias_args(q, bias, bias_index, transposed):
    """(bias planes, index, has_bias) for the kernels; ``transposed``: the planes as (M, Lk, Lq), for the
    kernels that walk a tile along its query lanes (one transposing copy of the M planes per call: read
    down its columns inside the kernel instead, a causal mask made the L = 77, d = 64 backward 1.8x slower)."""
    if bias is None:
        return np.zeros((1, 1, 1), q.dtype), np.zeros(q.shape[0], np.int64), False
    return (np.ascontiguousarray(bias.transpose(0, 2, 1)) if transposed else bias), bias_index, True


def _tiles(N, Lq, Lk, d, forward=False):
    """(query tile, key tile) for N row blocks of Lq queries and Lk keys of width d: TILE_Q × TILE_K
    on the small-head path (2·TILE_Q × TILE_K in its forward, whose every loop runs along the query
    lanes: measured 10-25 % faster, d = 8, one thread; its backward's loops run along the keys); on
    the BLAS path BLAS_TILE_SCALE times that, the query tile halved (not below TILE_Q) while the
    forward would have fewer than 2 (row block, query tile) tasks per thread, and neither tile longer
    than its sequence (each task allocates its tiles: 512 KiB of scores for a 64-query row block
    measured 1.6× slower than 32 KiB). The BLAS forward takes twice the query tile, 512 × 512 (a 1 MiB
    score tile, read row by row: each row's exp and sum stay in L1): L = 4096, d = 64, one thread, CPU
    time, 836 → 820 ms (load 2; 1024 × 256 and 1024 × 512 measured the same, 512 × 1024 864 ms)."""
    if d <= SMALL_HEAD_DIM:  # the forward's lanes are 2·TILE_Q queries: its loops run along them
        return (2 * TILE_Q if forward else TILE_Q), TILE_K
    tq = TILE_Q * BLAS_TILE_SCALE * (2 if forward else 1)  # forward: half as many packings of each k and v tile
    while tq > TILE_Q and N * -(-Lq // tq) < 2 * num_threads():
        tq //= 2
    return min(max(tq, TILE_Q), max(Lq, 1)), min(TILE_K * BLAS_TILE_SCALE, max(Lk, 1))


def attention_forward_numba(q, k, v, bias=None, bias_index=None, scale=None):
    """Tiled Numba forward -> (out (..., Lq, dv), lse (..., Lq)); d ≤ SMALL_HEAD_DIM takes the direct kernel."""
    lead = q.shape[:-1]
    q, k, v = _flat3(q), _flat3(k), _flat3(v)  # (N, L, d)
    out = np.empty((q.shape[0], q.shape[1], v.shape[2]), q.dtype)
    lse = np.empty(q.shape[:2], q.dtype)
    blas = q.shape[2] > SMALL_HEAD_DIM
    b, bi, has_b = _bias_args(q, bias, bias_index, transposed=not blas)  # the small-head forward walks query lanes
    kernel = attention_forward_tiled if blas else attention_forward_direct
    tq, tk = _tiles(q.shape[0], q.shape[1], k.shape[1], q.shape[2], forward=True)
    with blas_single_thread():
        tasks = q.shape[0] * -(-q.shape[1] // tq)  # (row block, query tile) pairs
        args = (q, k, v, b, bi, has_b, q.dtype.type(scale), out, lse, tq, tk, _exp_constants(q.dtype), q.dtype == np.float32)
        own_pv = host_has_avx512() and v.shape[2] % MICRO_LANES == 0  # whole register blocks only (no edge loop)
        parallel_for(kernel, tasks, *(args + (own_pv,) if blas else args))
    return out.reshape(lead + (v.shape[2],)), lse.reshape(lead)


def attention_backward_numba(g, q, k, v, out, lse, bias=None, bias_index=None, scale=None):
    """Tiled Numba backward -> (dq, dk, dv), recomputing P from ``lse``."""
    shapes = q.shape, k.shape, v.shape
    g, q, k, v, out = (_flat3(a) for a in (g, q, k, v, out))  # (N, L, ·)
    D = np.einsum("nic,nic->ni", g, out)  # (N, Lq): D_i = dO_i · O_i
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    blas = q.shape[2] > SMALL_HEAD_DIM
    b, bi, has_b = _bias_args(q, bias, bias_index, transposed=blas)  # the small-head backward walks keys
    kernel = attention_backward_blas if blas else attention_backward_direct
    with blas_single_thread():
        parallel_for(kernel, q.shape[0], g, q, k, v, D, lse.reshape(q.shape[:2]), b, bi, has_b, q.dtype.type(scale),
                     dq, dk, dv, *_tiles(q.shape[0], q.shape[1], k.shape[1], q.shape[2]), _exp_constants(q.dtype),
                     q.dtype == np.float32)
    return tuple(a.reshape(shape) for a, shape in zip((dq, dk, dv), shapes))
