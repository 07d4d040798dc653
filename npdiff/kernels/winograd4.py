"""Winograd F(4×4, 3×3), channels last: 3×3 stride-1 convolution with 4× fewer multiplies than direct.

Notation as in ``winograd.py``: x (N, C, H, W), w (O, C, 3, 3), padding (ph, pw), out (N, O, Ho, Wo),
Ho = H + 2ph − 2, Wo = W + 2pw − 2. The output is cut into 4×4 tiles (th = ⌈Ho/4⌉ by tw = ⌈Wo/4⌉ per
image); tile (ti, tj) reads the 6×6 patch d = xpad[4ti : 4ti+6, 4tj : 4tj+6] of every channel.

One-dimensional F(4, 3) by Toom-Cook on the points P = (0, 1, −1, ½, −2) and ∞ (``toom_cook``):
four outputs of a 3-tap correlation from 6 inputs with 6 multiplies,

    y = Aᵀ [(G g) ⊙ (Bᵀ d)],   Aᵀ[i, j] = p_jⁱ,   G[j, k] = p_jᵏ / Π_{l≠j}(p_j − p_l),
    Bᵀ[j] = the coefficients of Π_{l≠j}(t − p_l),  and for ∞: Aᵀ[:, 5] = e₃, G[5] = e₂, Bᵀ[5] = Π_l (t − p_l);

nested in two dimensions (36 = 6×6 positions ξ = 6a + b):

    U[ξ, c, o] = (G w[o, c] Gᵀ)[ξ]                 weights, once per call (float64, rounded once)
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
and Bᵀ for these points is a dyadic fraction (exact in float32); G's are not, so U is computed in
float64 and rounded once.

Channels last. The transforms are short linear combinations; F(2×2, 3×3)'s (``winograd.py``) run along
a tile row of one plane, a loop only ⌈W/2⌉ long (4 on an 8×8 plane). Here every combination runs along
the channels instead — a loop of C (32 to 512 in the UNets), whatever the plane — on an image copied
once into a padded channels-last buffer xt (Hp, Wp, C); V and M hold channels last too, so each GEMM
is V[ξ] (tiles × C) @ U[ξ] (C × O) into M[ξ] (tiles × O), and the output transform writes an image's
channels-last tiles yt (4th, 4tw, O), copied once into NCHW.

Grad-input of a 3×3 stride-1 conv with padding p is the conv of g with w̃[c, o, u, v] = w[o, c, 2 − u,
2 − v] and padding 2 − p (``weight_transform(w, flip=True)``), as for F(2×2, 3×3).

Fast path (``winograd4_conv3x3``): parallel over chunks of ``nb`` whole images (``parallel_for``);
per chunk a thread transforms its images' patches into V (36, nb·th·tw, C), runs the 36 sgemms into
M (36, nb·th·tw, O), and transforms and writes the output tiles. Each thread owns whole images.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from .config import blas_single_thread, jit_helper, jit_serial, num_threads, parallel_for

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


def weight_transform(w, flip=False):
    """U (36, C, O) = G w[o, c] Gᵀ for w (O, C, 3, 3), the GEMMs' right-hand sides; with ``flip``, of the
    grad-input's kernel w̃[c, o, u, v] = w[o, c, 2 − u, 2 − v] instead (U (36, O, C)).

    Arithmetic in float64, rounded once to w's dtype. (numpy tensordots and transposes took 6.6 ms for
    128×128 channels, more than the convolution's transforms; ``_weight_transform`` vectorises over the
    output channel.)
    """
    if flip:
        k = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(0, 2, 3, 1))  # (in = O, u, v, out = C): w̃ by rows
    else:
        k = np.ascontiguousarray(w.transpose(1, 2, 3, 0))  # (in = C, u, v, out = O)
    U = np.empty((ALPHA * ALPHA, k.shape[0], k.shape[3]), w.dtype)
    _weight_transform(k, G, U)
    return U


@jit_serial
def _weight_transform(k, g, U):
    """U[6a + b, i, j] = Σ_u Σ_v G[a, u] k[i, u, v, j] G[b, v], in float64, for k (in, 3, 3, out).

    Plain form: t[a, v] = Σ_u G[a, u] k[u, v] (6×3), then U[6a + b] = Σ_v t[a, v] G[b, v]; each a loop
    over the output channel j.
    """
    n_in, n_out = k.shape[0], k.shape[3]
    t = np.empty((ALPHA, 3, n_out))
    for i in range(n_in):
        for a in range(ALPHA):
            g0, g1, g2 = g[a, 0], g[a, 1], g[a, 2]
            for v in range(3):
                dst = t[a, v]
                for j in range(n_out):
                    dst[j] = g0 * np.float64(k[i, 0, v, j]) + g1 * np.float64(k[i, 1, v, j]) + g2 * np.float64(k[i, 2, v, j])
        for a in range(ALPHA):
            for b in range(ALPHA):
                g0, g1, g2 = g[b, 0], g[b, 1], g[b, 2]
                dst = U[ALPHA * a + b, i]
                for j in range(n_out):
                    dst[j] = g0 * t[a, 0, j] + g1 * t[a, 1, j] + g2 * t[a, 2, j]


@jit_serial
def _weight_transform_adjoint(acc, g, gw):
    """gw[o, c, u, v] = Σ_a Σ_b G[a, u] G[b, v] Σ_t acc[t, 6a + b, c, o] in float64 (the adjoint of
    ``_weight_transform``, after the threads' partial sums); acc (T, 36, C, O), gw (O, C, 3, 3).

    Plain form: s[ξ] = Σ_t acc[t, ξ, c] (float64), q[u, b] = Σ_a G[a, u] s[6a + b], gw[:, c, u, v] =
    Σ_b G[b, v] q[u, b]; each a loop over the output channel o.
    """
    T, XI, C, O = acc.shape
    s = np.empty((XI, O))
    q = np.empty((3, ALPHA, O))
    r = np.empty((3, 3, O))
    for c in range(C):
        for xi in range(XI):
            dst = s[xi]
            dst[:] = 0
            for t in range(T):
                src = acc[t, xi, c]
                for o in range(O):
                    dst[o] += src[o]
        for u in range(3):
            for b in range(ALPHA):
                dst = q[u, b]
                dst[:] = 0
                for a in range(ALPHA):
                    ga = g[a, u]
                    src = s[ALPHA * a + b]
                    for o in range(O):
                        dst[o] += ga * src[o]
        for u in range(3):
            for v in range(3):
                dst = r[u, v]
                dst[:] = 0
                for b in range(ALPHA):
                    gb = g[b, v]
                    src = q[u, b]
                    for o in range(O):
                        dst[o] += gb * src[o]
        for o in range(O):
            for u in range(3):
                for v in range(3):
                    gw[o, c, u, v] = r[u, v, o]


@jit_helper
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


@jit_helper
def _to_nchw(yt, n, out):
    """out[n, o, h, v] = yt[h, v, o] for h < Ho, v < Wo (the tiles' last rows/columns past the edge dropped)."""
    O, Ho, Wo = out.shape[1], out.shape[2], out.shape[3]
    for h in range(Ho):
        src = yt[h]  # (Wt, O)
        for o in range(O):
            dst = out[n, o, h]
            for v in range(Wo):
                dst[v] = src[v, o]


# The transforms below are written as plain loop nests with the channel loop innermost and every
# coefficient read into a scalar before it: one call per image (a helper call or a row view per
# combination cost more than the combination itself, 6–8 channel vectors at C = 64), and nothing
# inside the channel loop may alias its stores, so LLVM vectorises it.


@jit_helper
def _input_tiles(xt, b_t, base, th, tw, T1, V):
    """V[6a + k, base + ti·tw + tj, :] = (Bᵀ d B)[a, k] of the 6×6 channels-last patch d at (4ti, 4tj) of xt.

    Plain form: per patch row r, T1[r, k] = Σ_s Bᵀ[k, s] d[r, s] (column combinations), then per
    column k, V[6a + k] = Σ_r Bᵀ[a, r] T1[r, k] (row combinations); every term a channel vector.
    """
    C = xt.shape[2]
    for ti in range(th):
        for tj in range(tw):
            p = base + ti * tw + tj
            q = 4 * tj
            for r in range(ALPHA):
                d = xt[4 * ti + r]  # (Wp, C)
                for k in range(ALPHA):
                    c0, c1, c2, c3, c4, c5 = b_t[k, 0], b_t[k, 1], b_t[k, 2], b_t[k, 3], b_t[k, 4], b_t[k, 5]
                    for c in range(C):
                        T1[r, k, c] = (c0 * d[q, c] + c1 * d[q + 1, c] + c2 * d[q + 2, c] + c3 * d[q + 3, c]
                                       + c4 * d[q + 4, c] + c5 * d[q + 5, c])
            for a in range(ALPHA):
                c0, c1, c2, c3, c4, c5 = b_t[a, 0], b_t[a, 1], b_t[a, 2], b_t[a, 3], b_t[a, 4], b_t[a, 5]
                for k in range(ALPHA):
                    v = V[ALPHA * a + k, p]  # (C,)
                    for c in range(C):
                        v[c] = (c0 * T1[0, k, c] + c1 * T1[1, k, c] + c2 * T1[2, k, c] + c3 * T1[3, k, c]
                                + c4 * T1[4, k, c] + c5 * T1[5, k, c])


@jit_helper
def _output_tiles(M, a_t, bias, base, th, tw, S1, yt):
    """yt[4ti + i, 4tj + j, :] = (Aᵀ M[:, p, :] A)[i, j] + bias, p = base + ti·tw + tj.

    Plain form: S1[i, k] = Σ_r Aᵀ[i, r] M[6r + k] (rows), then y[i, j] = Σ_k Aᵀ[j, k] S1[i, k] (columns).
    """
    O = yt.shape[2]
    for ti in range(th):
        for tj in range(tw):
            p = base + ti * tw + tj
            for i in range(M_OUT):
                c0, c1, c2, c3, c4, c5 = a_t[i, 0], a_t[i, 1], a_t[i, 2], a_t[i, 3], a_t[i, 4], a_t[i, 5]
                for k in range(ALPHA):
                    s = S1[i, k]
                    for o in range(O):
                        s[o] = (c0 * M[k, p, o] + c1 * M[ALPHA + k, p, o] + c2 * M[2 * ALPHA + k, p, o]
                                + c3 * M[3 * ALPHA + k, p, o] + c4 * M[4 * ALPHA + k, p, o]
                                + c5 * M[5 * ALPHA + k, p, o])
            for i in range(M_OUT):
                row = yt[4 * ti + i]  # (Wt, O)
                for j in range(M_OUT):
                    c0, c1, c2, c3, c4, c5 = a_t[j, 0], a_t[j, 1], a_t[j, 2], a_t[j, 3], a_t[j, 4], a_t[j, 5]
                    dst = row[4 * tj + j]
                    for o in range(O):
                        dst[o] = (c0 * S1[i, 0, o] + c1 * S1[i, 1, o] + c2 * S1[i, 2, o] + c3 * S1[i, 3, o]
                                  + c4 * S1[i, 4, o] + c5 * S1[i, 5, o]) + bias[o]


@jit_serial
def _winograd4_chunks(lo, hi, x, U, bias, a_t, b_t, ph, pw, th, tw, nb, out):
    """Chunks [lo, hi) of nb images each: V = input tiles, M[ξ] = V[ξ] @ U[ξ] (36 sgemms), output tiles."""
    N, C = x.shape[0], x.shape[1]
    O = U.shape[2]
    P = th * tw
    vbuf = np.empty(ALPHA * ALPHA * nb * P * C, x.dtype)
    mbuf = np.empty(ALPHA * ALPHA * nb * P * O, x.dtype)
    xt = np.empty((4 * th + 2, 4 * tw + 2, C), x.dtype)  # one padded image, channels last
    yt = np.empty((4 * th, 4 * tw, O), x.dtype)  # one image's output tiles, channels last
    T1 = np.empty((ALPHA, ALPHA, C), x.dtype)
    S1 = np.empty((M_OUT, ALPHA, O), x.dtype)
    for t in range(lo, hi):
        n0 = t * nb
        mb = min(nb, N - n0)
        L = mb * P
        V = vbuf[: ALPHA * ALPHA * L * C].reshape((ALPHA * ALPHA, L, C))
        M = mbuf[: ALPHA * ALPHA * L * O].reshape((ALPHA * ALPHA, L, O))
        for b in range(mb):
            _to_channels_last(x, n0 + b, ph, pw, xt)
            _input_tiles(xt, b_t, b * P, th, tw, T1, V)
        for xi in range(ALPHA * ALPHA):
            np.dot(V[xi], U[xi], M[xi])
        for b in range(mb):
            _output_tiles(M, a_t, bias, b * P, th, tw, S1, yt)
            _to_nchw(yt, n0 + b, out)


@jit_helper
def _output_tiles_adjoint(gt, a_t, base, th, tw, S1, GM):
    """GM[6a + b, base + ti·tw + tj, :] = (A gy Aᵀ)[a, b] of the 4×4 channels-last tile gy at (4ti, 4tj) of gt:
    the adjoint of ``_output_tiles`` (y = Aᵀ m A, so gm = A gy Aᵀ), the weight gradient's transform of g.

    Plain form: S1[i, b] = Σ_j Aᵀ[j, b] gy[i, j] (columns), then GM[6a + b] = Σ_i Aᵀ[i, a] S1[i, b] (rows).
    """
    O = gt.shape[2]
    for ti in range(th):
        for tj in range(tw):
            p = base + ti * tw + tj
            q = 4 * tj
            for i in range(M_OUT):
                d = gt[4 * ti + i]  # (Wt, O)
                for b in range(ALPHA):
                    c0, c1, c2, c3 = a_t[0, b], a_t[1, b], a_t[2, b], a_t[3, b]
                    s = S1[i, b]
                    for o in range(O):
                        s[o] = c0 * d[q, o] + c1 * d[q + 1, o] + c2 * d[q + 2, o] + c3 * d[q + 3, o]
            for a in range(ALPHA):
                c0, c1, c2, c3 = a_t[0, a], a_t[1, a], a_t[2, a], a_t[3, a]
                for b in range(ALPHA):
                    m = GM[ALPHA * a + b, p]  # (O,)
                    for o in range(O):
                        m[o] = c0 * S1[0, b, o] + c1 * S1[1, b, o] + c2 * S1[2, b, o] + c3 * S1[3, b, o]


@jit_serial
def _winograd4_weight_grad_chunks(t0, t1, x, g, a_t, b_t, ph, pw, th, tw, nb, acc):
    """acc[t] (36, C, O) = Σ over thread t's chunks of V[ξ]ᵀ (C, tiles) @ GM[ξ] (tiles, O); workspace rows
    [t0, t1) (one per thread; ``parallel_for`` over the T rows, as conv's ``_weight_grad_chunks``)."""
    N, C = x.shape[0], x.shape[1]
    T, XI, _, O = acc.shape
    P = th * tw
    chunks = -(-N // nb)
    vbuf = np.empty(XI * nb * P * C, x.dtype)
    mbuf = np.empty(XI * nb * P * O, x.dtype)
    prod = np.empty((C, O), x.dtype)
    xt = np.empty((4 * th + 2, 4 * tw + 2, C), x.dtype)
    gt = np.empty((4 * th, 4 * tw, O), x.dtype)  # one image's g, channels last, zeros past the edge
    T1 = np.empty((ALPHA, ALPHA, C), x.dtype)
    S1 = np.empty((M_OUT, ALPHA, O), x.dtype)
    for tid in range(t0, t1):
        lo, hi = tid * chunks // T, (tid + 1) * chunks // T
        if hi <= lo:
            acc[tid] = 0
        for t in range(lo, hi):
            n0 = t * nb
            mb = min(nb, N - n0)
            L = mb * P
            V = vbuf[: XI * L * C].reshape((XI, L, C))
            GM = mbuf[: XI * L * O].reshape((XI, L, O))
            for b in range(mb):
                _to_channels_last(x, n0 + b, ph, pw, xt)
                _input_tiles(xt, b_t, b * P, th, tw, T1, V)
                _to_channels_last(g, n0 + b, 0, 0, gt)
                _output_tiles_adjoint(gt, a_t, b * P, th, tw, S1, GM)
            for xi in range(XI):
                if t == lo:
                    np.dot(V[xi].T, GM[xi], acc[tid, xi])
                    continue
                np.dot(V[xi].T, GM[xi], prod)
                a = acc[tid, xi]
                for c in range(C):
                    src, dst = prod[c], a[c]
                    for o in range(O):
                        dst[o] += src[o]


def winograd4_weight_grad(x, g, padding):
    """gw (O, C, 3, 3) of conv2d(x, w, stride 1, padding) for the upstream gradient g (N, O, Ho, Wo).

    The forward's tiles differentiated: out tile = Aᵀ[Σ_c V[ξ, p, c] U[ξ, c, o]]A with U = G w Gᵀ, so
    gU[ξ, c, o] = Σ_p V[ξ, p, c] · (A g_tile Aᵀ)[ξ, p, o] (36 GEMMs (C × tiles) · (tiles × O), summed per
    thread, then over threads) and gw[o, c] = Gᵀ gU[:, c, o] G (in float64, rounded once).
    x, g C-contiguous. Chunks of whole images, as the forward's.
    """
    N, C = x.shape[0], x.shape[1]
    O, Ho, Wo = g.shape[1], g.shape[2], g.shape[3]
    ph, pw = padding
    th, tw = -(-Ho // M_OUT), -(-Wo // M_OUT)
    T = num_threads()
    nb = _images_per_chunk(N, C, O, th * tw, x.itemsize, T)
    acc = np.empty((T, ALPHA * ALPHA, C, O), x.dtype)
    with blas_single_thread():
        parallel_for(_winograd4_weight_grad_chunks, T, x, g, A_T.astype(x.dtype), B_T.astype(x.dtype), ph, pw, th,
                     tw, nb, acc)
    gw = np.empty((O, C, 3, 3), x.dtype)
    _weight_transform_adjoint(acc, G, gw)
    return gw


# Images per chunk: V + M of one chunk, 36·(C + O)·tiles floats, within CHUNK_BYTES (at least one image).
CHUNK_BYTES = 2 << 20


def _images_per_chunk(N, c_in, c_out, tiles, itemsize, T):
    """Whole images per chunk: V + M within CHUNK_BYTES, and a multiple of T chunks while N allows
    (even work for the T threads; as conv's ``_plan``)."""
    per_image = ALPHA * ALPHA * (c_in + c_out) * tiles * itemsize
    nb = max(1, min(CHUNK_BYTES // per_image, -(-N // T)))
    chunks = min(N, -(-(-(-N // nb)) // T) * T)
    return -(-N // chunks)


def winograd4_conv3x3(x, U, bias, padding, out):
    """out (N, O, Ho, Wo) = conv2d(x, w, bias, stride 1, padding) from U = weight_transform(w); fills out.

    x C-contiguous (N, C, H, W); bias (O,) (zeros for none). Chunks of whole images, V + M within
    CHUNK_BYTES (at least one image), split over threads (at least one chunk per thread when N allows).
    """
    N, C = x.shape[0], x.shape[1]
    O = U.shape[2]
    ph, pw = padding
    Ho, Wo = out.shape[2], out.shape[3]
    th, tw = -(-Ho // M_OUT), -(-Wo // M_OUT)
    nb = _images_per_chunk(N, C, O, th * tw, x.itemsize, num_threads())
    a_t, b_t = A_T.astype(x.dtype), B_T.astype(x.dtype)
    with blas_single_thread():
        parallel_for(_winograd4_chunks, -(-N // nb), x, U, bias, a_t, b_t, ph, pw, th, tw, nb, out)
    return out
