"""Winograd F(4×4, 3×3), channels last: 3×3 stride-1 convolution with 4× fewer multiplies than direct.

Notation as in ``winograd.py``: x (N, C, H, W), w (O, C, 3, 3), padding (ph, pw), out (N, O, Ho, Wo),
Ho = H + 2ph − 2, Wo = W + 2pw − 2. The output is cut into 4×4 tiles (th = ⌈Ho/4⌉ by tw = ⌈Wo/4⌉ per
image); tile (ti, tj) reads the 6×6 patch d = xpad[4ti : 4ti+6, 4tj : 4tj+6] of every channel.

One-dimensional F(4, 3) by Toom-Cook on the points P = (0, 1, −1, ½, −2) and ∞ (``toom_cook``):
four outputs of a 3-tap correlation from 6 inputs with 6 multiplies,

    y = Aᵀ [(G g) ⊙ (Bᵀ d)],   Aᵀ[i, j] = p_jⁱ,   G[j, k] = p_jᵏ / Π_{l≠j}(p_j − p_l),
    Bᵀ[j] = the coefficients of Π_{l≠j}(t − p_l),  and for ∞: Aᵀ[:, 5] = e₃, G[5] = e₂, Bᵀ[5] = Π_l (t − p_l);

nested in two dimensions (36 = 6×6 positions ξ = 6a + b):

    U[ξ, c, o] = (G w[o, c] Gᵀ)[ξ]                 weights, once per call (one GEMM with G ⊗ G)
    V[ξ, p, c] = (Bᵀ d[c, p] B)[ξ]                 input patches, p the tile
    M[ξ, p, o] = Σ_c V[ξ, p, c] · U[ξ, c, o]       36 GEMMs (tiles × C) · (C × O)
    out tile   = Aᵀ M[:, p, o] A  (+ b[o])          (4×4 outputs)

so a tile costs 36·C multiply-adds per output channel instead of the direct 16·9·C: 4× fewer (F(2×2, 3×3):
2.25×), and 36/16 = 2.25 transformed values per output pixel instead of 16/4 = 4.

Points. Which five finite points sets the float32 error: every output is a sum of 36 products whose
magnitudes the transforms scale. With |d| = |w| = 1, output (i, j) of the nested form sums, over ξ = (a, b),
|Aᵀ[i,a]|·|Aᵀ[j,b]|·(|G|𝟙|G|ᵀ)[a,b]·(|Bᵀ|𝟙|B|)[a,b], against 9 for the direct sum (``error_factor``):
the rounding-error bound grows by that ratio. (0, ±1, ±2), the usual choice, gives 256; (0, ±1, ±½) also
256; **(0, 1, −1, ½, −2) gives 97.3** (the reciprocal pair balances the growth of Aᵀ's powers against
G's divisors; Barabasz et al. 2020, "Error analysis and improving the accuracy of Winograd convolution
for deep neural networks", reach the same set). F(2×2, 3×3) by the same count: 7.1. Every entry of Aᵀ
and Bᵀ for these points is a dyadic fraction (exact in float32); G's are not (U's roundings are in the
error bound of ``test_winograd_error_against_float64_is_within_its_bound``).

Channels last. The transforms are short linear combinations; F(2×2, 3×3)'s (``winograd.py``) run along
a tile row of one plane, a loop only ⌈W/2⌉ long (4 on an 8×8 plane). Here every combination runs along
the channels instead — a loop of C (32 to 512 in the UNets), whatever the plane — on an image copied
once into a padded channels-last buffer xt (Hp, Wp, C); V and M hold channels last too, so each GEMM
is V[ξ] (tiles × C) @ U[ξ] (C × O) into M[ξ] (tiles × O), and the output transform writes an image's
channels-last tiles yt (4th, 4tw, O), copied once into NCHW.

Grad-input of a 3×3 stride-1 conv with padding p is the conv of g with w̃[c, o, u, v] = w[o, c, 2 − u,
2 − v] and padding 2 − p (``weight_transform(w, flip=True)``), as for F(2×2, 3×3).

Weight gradient (``winograd4_weight_grad``): the forward differentiated through its tiles, gU[ξ] =
Σ_p (A g_tile Aᵀ)[ξ, p]ᵀ V[ξ, p] (36 GEMMs (O × tiles) · (tiles × C)) and gw[o, c] = Gᵀ gU[:, o, c] G.

Fast path (``winograd4_conv3x3``): parallel over chunks of ``nb`` whole images, or of a band of tile rows of
one image where an image's V + M would not fit the budget (``_chunk_plan``, ``parallel_for``); per chunk a
thread transforms its patches into V (36, tiles, C), runs the 36 products into M (36, tiles, O) (by
``microgemm.gemm`` where it beats the BLAS, ``own_gemm_pays``), and transforms and writes the output tiles'
rows. Each thread owns whole chunks; for
the weight gradient each thread sums its run of chunks into its own accumulator. One driver
(``_winograd4_chunks``) does both, so that the inlined transforms compile once.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from . import precompile
from .config import blas_single_thread, jit_inline, jit_serial, num_threads, parallel_for
from .microgemm import LANES, beats_blas, gemm

M_OUT, R_TAPS = 4, 3  # outputs per tile side, kernel size
ALPHA = M_OUT + R_TAPS - 1  # 6: patch side, transformed positions per side
POINTS = (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-2))


def toom_cook(points, m=M_OUT, r=R_TAPS):
    """(Aᵀ (m, α), G (α, r), Bᵀ (α, α)) of F(m, r) on the finite ``points`` and ∞ (module docstring),
    in exact rational arithmetic, returned as float64 arrays; α = len(points) + 1 = m + r − 1."""
    points = tuple(Fraction(p) for p in points)
    n = len(points)
    if n + 1 != m + r - 1 or len(set(points)) != n:
        raise ValueError(f"F({m}, {r}) needs {m + r - 2} distinct finite points, got {points}")
    a_t = [[Fraction(0)] * (n + 1) for _ in range(m)]
    g = [[Fraction(0)] * r for _ in range(n + 1)]
    b_t = [[Fraction(0)] * (n + 1) for _ in range(n + 1)]

    def poly(roots):  # coefficients, lowest degree first, of Π (t − root)
        c = [Fraction(1)]
        for q in roots:
            c = [Fraction(0)] + c  # t·c
            for k in range(len(c) - 1):
                c[k] -= q * c[k + 1]
        return c

    for j, p in enumerate(points):
        others = [q for q in points if q != p]
        f = Fraction(1)
        for q in others:
            f *= p - q
        for i in range(m):
            a_t[i][j] = p ** i
        for k in range(r):
            g[j][k] = p ** k / f
        b_t[j][:n] = poly(others)
    a_t[m - 1][n], g[n][r - 1] = Fraction(1), Fraction(1)
    b_t[n] = poly(points)
    return tuple(np.array([[float(v) for v in row] for row in mat]) for mat in (a_t, g, b_t))


def error_factor(a_t, g, b_t):
    """Growth of the float rounding-error bound over the direct 9-term sum (module docstring): the largest
    Σ_ab |Aᵀ[i,a]||Aᵀ[j,b]|·(|G|𝟙|G|ᵀ)[a,b]·(|Bᵀ|𝟙|B|)[a,b] over outputs (i, j), divided by 9."""
    A, Gm, B = np.abs(a_t), np.abs(g), np.abs(b_t)
    r, alpha = Gm.shape[1], B.shape[0]
    terms = (Gm @ np.ones((r, r)) @ Gm.T) * (B @ np.ones((alpha, alpha)) @ B.T)  # (α, α)
    return float((A @ terms @ A.T).max() / (r * r))


def weight_grad_error_factor(a_t, g, b_t):
    """The same count for the weight gradient gw[u, v] = Σ_tiles Σ_ab G[a,u] G[b,v] (A gy Aᵀ)[a,b] (Bᵀ d B)[a,b]
    against the direct Σ_tiles Σ_ij gy[i,j] d[i+u, j+v] (m² terms per tile): the largest
    Σ_ab |G[a,u]||G[b,v]|·(|A|𝟙|A|ᵀ)[a,b]·(|Bᵀ|𝟙|B|)[a,b] over (u, v), divided by m²."""
    A, Gm, B = np.abs(a_t), np.abs(g), np.abs(b_t)
    m, alpha = A.shape[0], B.shape[0]
    terms = (A.T @ np.ones((m, m)) @ A) * (B @ np.ones((alpha, alpha)) @ B.T)  # (α, α)
    return float((Gm.T @ terms @ Gm).max() / (m * m))


A_T, G, B_T = toom_cook(POINTS)
ERROR_FACTOR = error_factor(A_T, G, B_T)  # 97.35… for the forward and grad-input (docstring)
WEIGHT_GRAD_ERROR_FACTOR = weight_grad_error_factor(A_T, G, B_T)  # 78.0… ((0, ±1, ±2): 177.8)


# (G ⊗ G)[6a + b, 3u + v] = G[a, u]·G[b, v]: U[ξ] = Σ_uv (G ⊗ G)[ξ, 3u + v] w[u, v], one (36 × 9) matrix for
# the weight transform and its transpose for its adjoint, so both are a single GEMM over all channel pairs
# in the data's dtype (numpy, nothing to compile: jitted loops in their place cost 1.9 s of the cold start;
# float32 is 3-6× faster than a float64 GEMM and its casts, and adds 9 + 1 roundings to U's error and
# 36 + 1 + T to the weight gradient's: the bounds of ``test_winograd_error_against_float64_is_within_its_bound``).
# The kernel rotated by 180° is the 9 taps reversed (8 − (3u + v) = 3(2 − u) + (2 − v)): GG's columns reversed.
GG = np.kron(G, G)
GG_FLIP = np.ascontiguousarray(GG[:, ::-1])
_GG = {(flip, np.dtype(dt)): np.ascontiguousarray(m, dt) for flip, m in ((False, GG), (True, GG_FLIP))
       for dt in (np.float32, np.float64)}


def weight_transform(w, flip=False):
    """U (36, C, O), U[ξ, c, o] = (G w[o, c] Gᵀ)[ξ], for w (O, C, 3, 3): the forward's GEMM operands (input
    channel by output channel); with ``flip``, those of the grad-input, the conv from O to C channels by
    w̃[c, o, u, v] = w[o, c, 2 − u, 2 − v]: U (36, O, C) = (G w[o, c] rotated by 180° Gᵀ).

    One GEMM in w's dtype: U (36, in·out) = (G ⊗ G) (36 × 9) @ kᵀ, k (in·out, 9) the kernels by channel pair
    (``np.dot`` hands kᵀ to BLAS as a transposed operand; ``@`` measured 5-14× slower on it). With ``flip``
    k is w itself; without, w with its two channel axes swapped (a copy of 9-float runs, 1/4 of U's size:
    a transposed GEMM operand in the 36 sgemms instead measured up to 20 % slower with OpenBLAS's AVX-512
    kernels).
    """
    O, C = w.shape[0], w.shape[1]
    if flip:  # the conv from O to C channels: pairs (o, c), w's own order
        return np.dot(_GG[True, w.dtype], np.ascontiguousarray(w).reshape(O * C, 9).T).reshape(ALPHA * ALPHA, O, C)
    k = np.ascontiguousarray(w.reshape(O, C, 9).transpose(1, 0, 2)).reshape(C * O, 9)  # pairs (c, o)
    return np.dot(_GG[False, w.dtype], k.T).reshape(ALPHA * ALPHA, C, O)


def weight_transform_adjoint(acc):
    """gw (O, C, 3, 3) with gw[o, c, u, v] = Σ_ξ (G ⊗ G)[ξ, 3u + v] Σ_t acc[t, ξ, o, c]: the adjoint of
    ``weight_transform`` (gw = Gᵀ gU G) on the threads' partial sums acc (T, 36, O, C), in acc's dtype."""
    T, XI, O, C = acc.shape
    gu = (acc[0] if T == 1 else acc.sum(axis=0)).reshape(XI, O * C)  # (36, O·C)
    return np.dot(gu.T, _GG[False, acc.dtype]).reshape(O, C, 3, 3)


@jit_inline
def _to_channels_last(x, n, ph, pw, xt):
    """xt[ph + h, pw + v, c] = x[n, c, h, v], zeros elsewhere: image n padded, channels last (Hp, Wp, C)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    Hp = xt.shape[0]
    for h in range(Hp):
        if h < ph or h >= ph + H:
            xt[h] = 0
            continue
        row = xt[h]  # (Wp, C)
        row[:pw] = 0
        row[pw + W :] = 0
        inside = row[pw : pw + W]  # (W, C): a view from column pw, so every index below is a plain range variable
        for c in range(C):
            src = x[n, c, h - ph]
            for v in range(W):
                inside[v, c] = src[v]


@jit_inline
def _to_nchw(yt, n, h0, h1, out):
    """out[n, o, h, v] = yt[h, v, o] for rows h in [h0, h1), v < Wo (the tiles' last columns past the edge dropped)."""
    O, Wo = out.shape[1], out.shape[3]
    for h in range(h0, h1):
        src = yt[h]  # (4·tw, O)
        for o in range(O):
            dst = out[n, o, h]
            for v in range(Wo):
                dst[v] = src[v, o]


# The transforms, written out for POINTS (the plain matrix form is in each docstring; the test against the
# reference checks every coefficient). Each combination is one loop over the channels (innermost, so LLVM
# vectorises it), reading only the inputs with a non-zero coefficient, with common differences shared:
# 26 of Bᵀ's 36 entries and 19 of Aᵀ's 24 are non-zero. Against dense 6-term sums with the coefficients
# read into scalars (one thread, CPU time, 64 images, the transforms alone, load 5.1): input 0.64 -> 0.54 ms
# and output 0.64 -> 0.35 ms at 64 channels on 16×16, 0.49 -> 0.34 and 0.61 -> 0.23 at 32 channels,
# 0.31 -> 0.22 and 0.26 -> 0.11 at 128 channels on 8×8. One inlined helper call per image: a call or a row
# view per combination cost more than the combination itself (6-8 channel vectors at C = 64).
#
#   Bᵀ = [[1, −3/2, −2,  3/2,  1, 0],      Aᵀ = [[1, 1,  1, 1,   1,  0],
#         [0, −1,   1/2, 5/2,  1, 0],            [0, 1, −1, 1/2, −2,  0],
#         [0,  1,  −5/2, 1/2,  1, 0],            [0, 1,  1, 1/4,  4,  0],
#         [0, −2,  −1,   2,    1, 0],            [0, 1, −1, 1/8, −8,  1]]
#         [0,  1/2, −1, −1/2,  1, 0],
#         [0,  1,  −3/2, −2,  3/2, 1]]
#
# The constants come in as ``coef`` (x's dtype, read into scalars k1_8 … k8): a Python literal would be
# a float64 and turn float32 arithmetic into float64 (half the vector width).
COEFS = (0.125, 0.25, 0.5, 1.5, 2.5, 2.0, 4.0, 8.0)  # k1_8, k1_4, k1_2, k3_2, k5_2, k2, k4, k8


def _coefs(dtype):
    return np.array(COEFS, dtype)


@jit_inline
def _input_tiles(xt, coef, base, th, tw, T1, V):
    """V[6a + k, base + ti·tw + tj, :] = (Bᵀ d B)[a, k] of the 6×6 channels-last patch d at (4ti, 4tj) of xt.

    Plain form: per patch row r, T1[r, k] = Σ_s Bᵀ[k, s] d[r, s] (column combinations), then per
    column k, V[6a + k] = Σ_r Bᵀ[a, r] T1[r, k] (row combinations); every term a channel vector.
    """
    C = xt.shape[2]
    k1_8, k1_4, k1_2, k3_2, k5_2, k2, k4, k8 = coef[0], coef[1], coef[2], coef[3], coef[4], coef[5], coef[6], coef[7]
    for ti in range(th):
        for tj in range(tw):
            p = base + ti * tw + tj
            q = 4 * tj
            for r in range(ALPHA):
                d = xt[4 * ti + r]  # (Wp, C); x_s = d[q + s]
                t = T1[r]  # (6, C)
                for c in range(C):
                    t[0, c] = (d[q, c] + d[q + 4, c]) - k2 * d[q + 2, c] + k3_2 * (d[q + 3, c] - d[q + 1, c])
                for c in range(C):
                    t[1, c] = (d[q + 4, c] - d[q + 1, c]) + k1_2 * d[q + 2, c] + k5_2 * d[q + 3, c]
                for c in range(C):
                    t[2, c] = (d[q + 1, c] + d[q + 4, c]) - k5_2 * d[q + 2, c] + k1_2 * d[q + 3, c]
                for c in range(C):
                    t[3, c] = (d[q + 4, c] - d[q + 2, c]) + k2 * (d[q + 3, c] - d[q + 1, c])
                for c in range(C):
                    t[4, c] = (d[q + 4, c] - d[q + 2, c]) + k1_2 * (d[q + 1, c] - d[q + 3, c])
                for c in range(C):
                    t[5, c] = (d[q + 1, c] + d[q + 5, c]) - k2 * d[q + 3, c] + k3_2 * (d[q + 4, c] - d[q + 2, c])
            for k in range(ALPHA):  # the same combinations of T1's rows r = 0..5
                for c in range(C):
                    V[k, p, c] = (T1[0, k, c] + T1[4, k, c]) - k2 * T1[2, k, c] + k3_2 * (T1[3, k, c] - T1[1, k, c])
                for c in range(C):
                    V[6 + k, p, c] = (T1[4, k, c] - T1[1, k, c]) + k1_2 * T1[2, k, c] + k5_2 * T1[3, k, c]
                for c in range(C):
                    V[12 + k, p, c] = (T1[1, k, c] + T1[4, k, c]) - k5_2 * T1[2, k, c] + k1_2 * T1[3, k, c]
                for c in range(C):
                    V[18 + k, p, c] = (T1[4, k, c] - T1[2, k, c]) + k2 * (T1[3, k, c] - T1[1, k, c])
                for c in range(C):
                    V[24 + k, p, c] = (T1[4, k, c] - T1[2, k, c]) + k1_2 * (T1[1, k, c] - T1[3, k, c])
                for c in range(C):
                    V[30 + k, p, c] = (T1[1, k, c] + T1[5, k, c]) - k2 * T1[3, k, c] + k3_2 * (T1[4, k, c] - T1[2, k, c])


@jit_inline
def _output_tiles(M, coef, bias, base, th, tw, S1, yt):
    """yt[4ti + i, 4tj + j, :] = (Aᵀ M[:, p, :] A)[i, j] + bias, p = base + ti·tw + tj.

    Plain form: S1[i, k] = Σ_r Aᵀ[i, r] M[6r + k] (rows), then y[i, j] = Σ_k Aᵀ[j, k] S1[i, k] (columns).
    """
    O = yt.shape[2]
    k1_8, k1_4, k1_2, k3_2, k5_2, k2, k4, k8 = coef[0], coef[1], coef[2], coef[3], coef[4], coef[5], coef[6], coef[7]
    for ti in range(th):
        for tj in range(tw):
            p = base + ti * tw + tj  # m_r of column k is M[6r + k, p]
            for k in range(ALPHA):
                for o in range(O):
                    S1[0, k, o] = M[k, p, o] + (M[6 + k, p, o] + M[12 + k, p, o]) + (M[18 + k, p, o] + M[24 + k, p, o])
                for o in range(O):
                    S1[1, k, o] = (M[6 + k, p, o] - M[12 + k, p, o]) + k1_2 * M[18 + k, p, o] - k2 * M[24 + k, p, o]
                for o in range(O):
                    S1[2, k, o] = (M[6 + k, p, o] + M[12 + k, p, o]) + k1_4 * M[18 + k, p, o] + k4 * M[24 + k, p, o]
                for o in range(O):
                    S1[3, k, o] = ((M[6 + k, p, o] - M[12 + k, p, o]) + k1_8 * M[18 + k, p, o] - k8 * M[24 + k, p, o]
                                   + M[30 + k, p, o])
            for i in range(M_OUT):
                s = S1[i]  # (6, O)
                h, v0 = 4 * ti + i, 4 * tj  # output row, first column of the tile
                for o in range(O):
                    yt[h, v0, o] = (s[0, o] + (s[1, o] + s[2, o]) + (s[3, o] + s[4, o])) + bias[o]
                for o in range(O):
                    yt[h, v0 + 1, o] = ((s[1, o] - s[2, o]) + k1_2 * s[3, o] - k2 * s[4, o]) + bias[o]
                for o in range(O):
                    yt[h, v0 + 2, o] = ((s[1, o] + s[2, o]) + k1_4 * s[3, o] + k4 * s[4, o]) + bias[o]
                for o in range(O):
                    yt[h, v0 + 3, o] = ((s[1, o] - s[2, o]) + k1_8 * s[3, o] - k8 * s[4, o] + s[5, o]) + bias[o]


@jit_inline
def _output_tiles_adjoint(gt, coef, base, th, tw, S1, GM):
    """GM[6a + b, base + ti·tw + tj, :] = (A gy Aᵀ)[a, b] of the 4×4 channels-last tile gy at (4ti, 4tj) of gt:
    the adjoint of ``_output_tiles`` (y = Aᵀ m A, so gm = A gy Aᵀ), the weight gradient's transform of g.

    Plain form: S1[i, b] = Σ_j Aᵀ[j, b] gy[i, j] (columns), then GM[6a + b] = Σ_i Aᵀ[i, a] S1[i, b] (rows).
    """
    O = gt.shape[2]
    k1_8, k1_4, k1_2, k3_2, k5_2, k2, k4, k8 = coef[0], coef[1], coef[2], coef[3], coef[4], coef[5], coef[6], coef[7]
    for ti in range(th):
        for tj in range(tw):
            q = 4 * tj
            for i in range(M_OUT):
                d = gt[4 * ti + i]  # (4·tw, O); g_j = d[q + j]
                s = S1[i]  # (6, O)
                for o in range(O):
                    s[0, o] = d[q, o]
                for o in range(O):
                    s[1, o] = (d[q, o] + d[q + 2, o]) + (d[q + 1, o] + d[q + 3, o])
                for o in range(O):
                    s[2, o] = (d[q, o] + d[q + 2, o]) - (d[q + 1, o] + d[q + 3, o])
                for o in range(O):
                    s[3, o] = d[q, o] + k1_2 * d[q + 1, o] + k1_4 * d[q + 2, o] + k1_8 * d[q + 3, o]
                for o in range(O):
                    s[4, o] = d[q, o] - k2 * d[q + 1, o] + k4 * d[q + 2, o] - k8 * d[q + 3, o]
                for o in range(O):
                    s[5, o] = d[q + 3, o]
            p = base + ti * tw + tj
            for b in range(ALPHA):  # the same combinations of S1's rows i = 0..3
                for o in range(O):
                    GM[b, p, o] = S1[0, b, o]
                for o in range(O):
                    GM[6 + b, p, o] = (S1[0, b, o] + S1[2, b, o]) + (S1[1, b, o] + S1[3, b, o])
                for o in range(O):
                    GM[12 + b, p, o] = (S1[0, b, o] + S1[2, b, o]) - (S1[1, b, o] + S1[3, b, o])
                for o in range(O):
                    GM[18 + b, p, o] = S1[0, b, o] + k1_2 * S1[1, b, o] + k1_4 * S1[2, b, o] + k1_8 * S1[3, b, o]
                for o in range(O):
                    GM[24 + b, p, o] = S1[0, b, o] - k2 * S1[1, b, o] + k4 * S1[2, b, o] - k8 * S1[3, b, o]
                for o in range(O):
                    GM[30 + b, p, o] = S1[3, b, o]


def own_gemm_pays(lanes):
    """The 36 products by ``microgemm.gemm`` instead of BLAS: where it beats the BLAS on this machine
    (``microgemm.beats_blas``) and the products' outputs have at least ``LANES`` columns (the convolution's
    output channels; the weight gradient's input channels). Measured in docs/kernels.md."""
    return lanes >= LANES and beats_blas()


# A chunk: V + M, 36·(C + O)·tiles floats, within a budget: whole images where one fits, else bands of tile
# rows of one image (at least one row). With microgemm's products, half of a 1 MB L2 (MICROGEMM_CHUNK_BYTES),
# so that V stays there between the input transform that writes it and the products that read it (and M
# between those and the output transform): one thread, CPU time, the chunk loop, 2 MB chunks of whole images
# -> bands of 4 tile rows (442 KB): 64->32 on 32×32 (the grad-input of 32->64), N 32, 5.94 -> 4.07 ms;
# 32->64 on 32×32 4.86 -> 4.31 ms; 64->64 on 16×16 (one 295 KB image per chunk) 3.27 -> 3.30 ms (load
# 5.7-6.1). BLAS's sgemm wants long products instead (its packing is paid per call): 512 KB chunks made the
# BLAS path 10-50 % slower with either OpenBLAS kernel (64->64 16×16 forward 3.23 -> 3.72 ms with AVX-512,
# 5.64 -> 7.53 with AVX2), so it keeps CHUNK_BYTES (1-8 MB measured within ±10 %).
CHUNK_BYTES = 2 << 20
MICROGEMM_CHUNK_BYTES = 512 << 10


def _chunk_plan(N, c_in, c_out, th, tw, itemsize, T, budget):
    """(nb, bt): nb images per chunk of bt tile rows each (bt < th only when nb is 1): V + M within ``budget``
    bytes, and, for whole images, a multiple of T chunks while N allows (even work for the T threads; as
    conv's ``_plan``)."""
    per_row = ALPHA * ALPHA * (c_in + c_out) * tw * itemsize  # V + M of one tile row
    if per_row * th > budget:
        return 1, max(1, min(th, budget // per_row))
    nb = max(1, min(budget // (per_row * th), -(-N // T)))
    chunks = min(N, -(-(-(-N // nb)) // T) * T)
    return -(-N // chunks), th


@jit_serial
def _winograd4_chunks(i0, i1, grad_weight, own_gemm, x, g, U, bias, coef, ph, pw, th, tw, nb, bt, out, acc):
    """The convolution (``grad_weight`` false: items [i0, i1) are chunks) or its weight gradient (true: items
    are the T workspace rows, one per thread, each summing its share of the chunks into acc[t]), one driver
    for both so that the transforms, inlined, are compiled once. A chunk is nb images, or a band of bt tile
    rows of one image (``_chunk_plan``); an image is copied channels last once for all its bands.

    Convolution of x (N, C, H, W) into out (N, O, Ho, Wo): V = input tiles of x, M[ξ] = V[ξ] @ U[ξ] (36
    GEMMs, U (36, C, O) from ``weight_transform``), output tiles + bias.
    Weight gradient for g (N, O, Ho, Wo): V of x, GM = A g Aᵀ per tile, acc[t, ξ] (O, C) += GM[ξ]ᵀ @ V[ξ].
    The 36 products by ``microgemm.gemm`` with ``own_gemm``, else by BLAS.
    Unused arguments of a mode are empty arrays of the same types (one compiled signature).
    """
    N, C = x.shape[0], x.shape[1]
    O = g.shape[1] if grad_weight else out.shape[1]
    Ho = g.shape[2] if grad_weight else out.shape[2]
    P = bt * tw  # tiles of one image in a chunk (at most)
    bands = -(-th // bt)
    chunks = -(-N // nb) * bands
    T = acc.shape[0]
    vbuf = np.empty(ALPHA * ALPHA * nb * P * C, x.dtype)
    mbuf = np.empty(ALPHA * ALPHA * nb * P * O, x.dtype)
    xt = np.empty((4 * th + 2, 4 * tw + 2, C), x.dtype)  # one padded image, channels last
    yt = np.empty((4 * th, 4 * tw, O), x.dtype)  # one image's output tiles (or g, zeros past the edge), channels last
    T1 = np.empty((ALPHA, ALPHA, C), x.dtype)
    S1 = np.empty((M_OUT, ALPHA, O), x.dtype)
    prod = np.empty((O, C), x.dtype)
    last = -1  # the image now in xt (and yt)
    for item in range(i0, i1):
        lo, hi = (item * chunks // T, (item + 1) * chunks // T) if grad_weight else (item, item + 1)
        if grad_weight and hi <= lo:
            acc[item] = 0
        for t in range(lo, hi):
            n0, ti0 = t // bands * nb, t % bands * bt
            mb, nt = min(nb, N - n0), min(bt, th - ti0)
            L = mb * nt * tw
            V = vbuf[: ALPHA * ALPHA * L * C].reshape((ALPHA * ALPHA, L, C))
            M = mbuf[: ALPHA * ALPHA * L * O].reshape((ALPHA * ALPHA, L, O))
            for b in range(mb):
                if n0 + b != last:
                    _to_channels_last(x, n0 + b, ph, pw, xt)
                    if grad_weight:
                        _to_channels_last(g, n0 + b, 0, 0, yt)
                    last = n0 + b
                # the band's rows: xt rows [4·ti0, 4·(ti0 + nt) + 2), yt rows [4·ti0, 4·(ti0 + nt))
                _input_tiles(xt[4 * ti0 : 4 * (ti0 + nt) + 2], coef, b * nt * tw, nt, tw, T1, V)
                if grad_weight:
                    _output_tiles_adjoint(yt[4 * ti0 : 4 * (ti0 + nt)], coef, b * nt * tw, nt, tw, S1, M)
            for xi in range(ALPHA * ALPHA):
                if own_gemm:  # microgemm.py: M[ξ] = V[ξ] @ U[ξ], or acc[ξ] (+)= GM[ξ]ᵀ @ V[ξ]; one call site
                    if grad_weight:
                        a_op, b_op, c_op = M[xi], V[xi], acc[item, xi]
                    else:
                        a_op, b_op, c_op = V[xi], U[xi], M[xi]
                    gemm(a_op, b_op, c_op, grad_weight, grad_weight and t != lo)
                elif not grad_weight:
                    np.dot(V[xi], U[xi], M[xi])
                elif t == lo:
                    np.dot(M[xi].T, V[xi], acc[item, xi])
                else:
                    np.dot(M[xi].T, V[xi], prod)
                    a = acc[item, xi]
                    for o in range(O):
                        src, dst = prod[o], a[o]
                        for c in range(C):
                            dst[c] += src[c]
            if not grad_weight:
                for b in range(mb):
                    _output_tiles(M, coef, bias, b * nt * tw, nt, tw, S1, yt[4 * ti0 : 4 * (ti0 + nt)])
                    _to_nchw(yt, n0 + b, 4 * ti0, min(4 * (ti0 + nt), Ho), out)


def winograd4_conv3x3(x, U, bias, padding, out, own_gemm=None):
    """out (N, O, Ho, Wo) = conv2d(x, w, bias, stride 1, padding) from U = weight_transform(w); fills out.
    (The grad-input: x = g, U = weight_transform(w, flip=True), padding 2 − p.)

    x C-contiguous (N, C, H, W); bias (O,) (zeros for none). Chunks of whole images or bands of tile rows,
    V + M within CHUNK_BYTES, or MICROGEMM_CHUNK_BYTES with microgemm's products (``_chunk_plan``).
    """
    precompile.wait()  # a helper compiling the driver for this run (precompile.py): load it, do not compile it twice
    N, C = x.shape[0], x.shape[1]
    O = out.shape[1]
    Ho, Wo = out.shape[2], out.shape[3]
    th, tw = -(-Ho // M_OUT), -(-Wo // M_OUT)
    own = own_gemm_pays(O) if own_gemm is None else own_gemm
    nb, bt = _chunk_plan(N, C, O, th, tw, x.itemsize, num_threads(), MICROGEMM_CHUNK_BYTES if own else CHUNK_BYTES)
    empty4 = np.empty((0, 0, 0, 0), x.dtype)
    with blas_single_thread():
        parallel_for(_winograd4_chunks, -(-N // nb) * -(-th // bt), False, own, x, empty4, U, bias, _coefs(x.dtype),
                     padding[0], padding[1], th, tw, nb, bt, out, empty4)
    return out


def winograd4_weight_grad(x, g, padding, own_gemm=None):
    """gw (O, C, 3, 3) of conv2d(x, w, stride 1, padding) for the upstream gradient g (N, O, Ho, Wo).

    The forward's tiles differentiated: out tile = Aᵀ[Σ_c V[ξ, p, c] U[ξ, c, o]]A with U = G w Gᵀ, so
    gU[ξ, o, c] = Σ_p (A g_tile Aᵀ)[ξ, p, o] · V[ξ, p, c] (36 GEMMs (O × tiles) · (tiles × C), summed per
    thread, then over threads) and gw[o, c] = Gᵀ gU[:, o, c] G (``weight_transform_adjoint``).
    x, g C-contiguous. Chunks as the forward's.
    """
    precompile.wait()  # (as winograd4_conv3x3)
    N, C = x.shape[0], x.shape[1]
    O, Ho, Wo = g.shape[1], g.shape[2], g.shape[3]
    th, tw = -(-Ho // M_OUT), -(-Wo // M_OUT)
    T = num_threads()
    own = own_gemm_pays(C) if own_gemm is None else own_gemm
    nb, bt = _chunk_plan(N, C, O, th, tw, x.itemsize, T, MICROGEMM_CHUNK_BYTES if own else CHUNK_BYTES)
    acc = np.empty((T, ALPHA * ALPHA, O, C), x.dtype)
    with blas_single_thread():
        parallel_for(_winograd4_chunks, T, True, own, x, g,
                     np.empty((0, 0, 0), x.dtype), np.empty(0, x.dtype), _coefs(x.dtype), padding[0], padding[1],
                     th, tw, nb, bt, np.empty((0, 0, 0, 0), x.dtype), acc)
    return weight_transform_adjoint(acc)
