"""Winograd F(2×2, 3×3): 3×3 stride-1 convolution with 2.25× fewer multiplies (Lavin & Gray 2016).

Notation: x (N, C, H, W), w (O, C, 3, 3), padding (ph, pw), out (N, O, Ho, Wo) with
Ho = H + 2ph − 2, Wo = W + 2pw − 2 (stride 1). The output is cut into 2×2 tiles; tile
(ti, tj) reads the 4×4 input patch d = xpad[2ti : 2ti+4, 2tj : 2tj+4] of every channel.

One-dimensional F(2, 3): two outputs of a 3-tap correlation from 4 inputs with 4 multiplies,

    y = Aᵀ [(G g) ⊙ (Bᵀ d)],   Bᵀ = [[1, 0, −1, 0],     G = [[1,   0,   0  ],     Aᵀ = [[1, 1,  1,  0],
                                     [0, 1,  1, 0],          [1/2, 1/2, 1/2],           [0, 1, −1, −1]]
                                     [0, −1, 1, 0],          [1/2, −1/2, 1/2],
                                     [0, 1,  0, −1]]         [0,   0,   1  ]]

and nested in two dimensions, per output channel o and tile p:

    U[ξ, o, c] = (G w[o, c] Gᵀ)[ξ]              weights, transformed once per call (16 = 4×4 positions ξ)
    V[ξ, c, p] = (Bᵀ d[c, p] B)[ξ]              input patches
    M[ξ, o, p] = Σ_c U[ξ, o, c] · V[ξ, c, p]    16 independent GEMMs (O × C) · (C × tiles)
    out tile   = Aᵀ M[:, o, p] A  (+ b[o])      (2×2 outputs)

So a tile costs 16·C multiply-adds per output channel instead of the direct 4·9·C: 2.25× fewer,
all of them in 16 sgemm calls. The transforms are additions (and the halving in G): O(C) and
O(O) work per tile, against O(O·C) in the GEMMs.

Grad-input of a 3×3 stride-1 convolution with padding p is itself a 3×3 stride-1
convolution: gx = conv2d(g, w̃, padding 2 − p), w̃[c, o, u, v] = w[o, c, 2 − u, 2 − v] (the
kernel flipped and its channel axes swapped) — so the same kernel serves it.

Rounding (float32): the transforms multiply magnitudes by at most ‖Bᵀ‖∞² = 4 (inputs),
‖G‖∞² = 9/4 (weights) and ‖Aᵀ‖∞² = 9 (outputs), so a Winograd output is a sum whose terms
are bounded by 4 · 9/4 · 9 = 81 times |x|·|w|, where the direct sum of the same 9C products
has terms bounded by |x|·|w|: its error bound is 81/9 = 9 times the direct one's. Measured
errors against float64 are in docs/kernels.md; the harness tolerance for this column is the
direct one times 9.

Fast path (``winograd_conv3x3``): parallel over chunks of ``nb`` whole images (``parallel_for``);
per chunk a thread transforms the patches of its images into V (16, C, nb·tiles), runs the 16
sgemms into M (16, O, nb·tiles) and writes the output tiles. Each thread owns whole images.
"""

from __future__ import annotations

import numpy as np

from .config import blas_single_thread, jit_helper, jit_inline, jit_serial, num_threads, parallel_for

# Tiles per chunk (the width of the 16 GEMMs): wide enough to keep sgemm efficient (inner dimension
# C only), but with V and M of one chunk (16·(C + O)·tiles floats) within CHUNK_BYTES, half a core's
# L2 (1 MB per core on the Zen machines these figures come from), so that the input transform's V is
# still in L2 when the GEMMs read it and their M when the output transform reads it. Measured per
# thread (``benchmarks/conv_algorithms.py --chunks``: CPU time, one thread, V + M of 0.25 to 4 MB on
# the benchmark and digits16 shapes): with OpenBLAS's AVX-512 sgemm, 0.5 MB was 10-20 % faster than
# 4 MB (C = O = 64 on 16×16: 6.3 vs 7.6 ms; 32→64 on 32×32: 8.1 vs 9.3 ms; 128→128 on 8×8: 5.2 vs
# 6.2 ms), where the transforms weigh more against the faster GEMMs; with its AVX2 sgemm the sizes
# were within 3 % of each other. (The earlier 4 MB had been chosen on whole-call times with the
# AVX2 sgemm only.)
TILES_PER_GEMM = 1024
CHUNK_BYTES = 512 << 10


def tiles_per_chunk(c_in, c_out, itemsize):
    """At most TILES_PER_GEMM tiles, and V + M of one chunk within CHUNK_BYTES (see above)."""
    return max(1, min(TILES_PER_GEMM, CHUNK_BYTES // (16 * (c_in + c_out) * itemsize)))

# the transforms of the module docstring (Lavin & Gray 2016, F(2, 3) with points 0, 1, −1)
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


def _inf_norm(m):
    return float(np.abs(m).sum(axis=1).max())


# growth of the rounding-error bound over the direct sum of the same products (module docstring):
# ‖Bᵀ‖∞²·‖G‖∞²·‖Aᵀ‖∞² / 9 = 4 · 9/4 · 9 / 9 = 9
ERROR_FACTOR = round(_inf_norm(B_T) ** 2 * _inf_norm(G) ** 2 * _inf_norm(A_T) ** 2 / 9)


def weight_transform(w, flip=False):
    """U (16, O, C) = G w[o, c] Gᵀ for each (o, c) of w (O, C, 3, 3); with ``flip``, of the flipped,
    transposed kernel w̃[c, o, u, v] = w[o, c, 2 − u, 2 − v] instead (U (16, C, O): the grad-input's).

    Arithmetic in float64 then rounded once to w's dtype. A numpy einsum took 4 ms for 128×128
    channels (more than a third of the conv it feeds); this loop is O·C·16 short sums.
    """
    O, C = w.shape[0], w.shape[1]
    U = np.empty((16, C, O) if flip else (16, O, C), w.dtype)
    _weight_transform(np.ascontiguousarray(w), flip, U)
    return U


@jit_serial
def _weight_transform(w, flip, U):
    """U[4a + b, i, j] = (G k Gᵀ)[a, b], k = w[i, j] or, with flip, w[j, i] rotated by 180°.

    Plain form: t = G k (rows: k0, (k0 + k1 + k2)/2, (k0 − k1 + k2)/2, k2), then U = t Gᵀ (the same
    on columns).
    """
    t = np.empty((4, 3))
    for i in range(U.shape[1]):
        for j in range(U.shape[2]):  # along U's rows: contiguous writes
            o, c = (j, i) if flip else (i, j)
            for v in range(3):
                if flip:
                    k0, k1, k2 = float(w[o, c, 2, 2 - v]), float(w[o, c, 1, 2 - v]), float(w[o, c, 0, 2 - v])
                else:
                    k0, k1, k2 = float(w[o, c, 0, v]), float(w[o, c, 1, v]), float(w[o, c, 2, v])
                t[0, v] = k0
                t[1, v] = 0.5 * (k0 + k1 + k2)
                t[2, v] = 0.5 * (k0 - k1 + k2)
                t[3, v] = k2
            for a in range(4):
                k0, k1, k2 = t[a, 0], t[a, 1], t[a, 2]
                U[4 * a, i, j] = k0
                U[4 * a + 1, i, j] = 0.5 * (k0 + k1 + k2)
                U[4 * a + 2, i, j] = 0.5 * (k0 - k1 + k2)
                U[4 * a + 3, i, j] = k2


@jit_helper
def copy_padded_rows(x, n, c, h0, nrows, Wp, lo, hi, pad):
    """pad[q, :Wp] = row h0 + q of the plane x[n, c] with its zero border, q < nrows: columns
    [lo, hi) hold x's columns [0, hi − lo), the rest (and rows outside the image) are 0.
    Shared with conv's ``_im2col``, which copies each plane's rows the same way."""
    H = x.shape[2]
    for q in range(nrows):
        row, h = pad[q, :Wp], h0 + q
        if h < 0 or h >= H:
            row[:] = 0
            continue
        row[:lo] = 0
        row[hi:] = 0
        inside, src = row[lo:hi], x[n, c, h]
        for m in range(hi - lo):
            inside[m] = src[m]


@jit_inline
def _phase_planes(x, n, c, ph, pw, th, tw, P):
    """P[2·pr + pc, i, j] = xpad[2i + pr, 2j + pc] (x[n, c, 2i + pr − ph, 2j + pc − pw], 0 outside),
    i ≤ th, j ≤ tw: the padded plane split by the parity of row and column, so that every entry of
    a tile's 4×4 patch is a unit-stride read along tj (patch entry (r, s) of tile (ti, tj) is
    P[2·(r % 2) + s % 2, ti + r // 2, tj + s // 2])."""
    H, W = x.shape[2], x.shape[3]
    for pr in range(2):
        for pc in range(2):
            # columns j with 0 ≤ 2j + pc − pw < W: [jlo, jhi)
            jlo = min(tw + 1, max(0, (pw - pc + 1) // 2))
            jhi = max(jlo, min(tw + 1, (W + pw - pc + 1) // 2))
            off = 2 * jlo + pc - pw
            for i in range(th + 1):
                row, h = P[2 * pr + pc, i], 2 * i + pr - ph
                if h < 0 or h >= H:
                    row[:] = 0
                    continue
                row[:jlo] = 0
                row[jhi:] = 0
                src, dst = x[n, c, h, off:], row[jlo:jhi]
                for j in range(jhi - jlo):
                    dst[j] = src[2 * j]


@jit_inline
def _input_tiles(x, n0, nb, ph, pw, th, tw, P, V):
    """V[ξ, c, b·th·tw + ti·tw + tj] = (Bᵀ d B)[ξ] of the 4×4 patch at (2ti − ph, 2tj − pw) of x[n0+b, c].

    Plain form: u = d B (per patch row r: u[r] = d0 − d2, d1 + d2, d2 − d1, d1 − d3 of its columns),
    V = Bᵀ u (the same combinations of the rows), V[4a + k] = (Bᵀ u)[a, k].
    Per plane the padded plane is split once into its four parity planes P (``_phase_planes``), so
    that, per tile row, every patch entry is a unit-stride vector along tj: row r of the patch is
    parity row ti + r // 2, with even columns e_r and odd columns o_r, d[r] = (e_r[tj], o_r[tj],
    e_r[tj + 1], o_r[tj + 1]). Each of the 16 outputs is then one loop over tj reading only those
    vectors, written out below (2.3-2.5× faster than the column combinations of strided reads into
    a scratch followed by the row combinations, measured in-process on 8×8 to 32×32 planes; a single
    loop writing all 16 outputs did not vectorise). Same operations in the same order as the plain
    form, so the result is bit-identical to it.
    """
    C = x.shape[1]
    P_ = th * tw
    for b in range(nb):
        for c in range(C):
            _phase_planes(x, n0 + b, c, ph, pw, th, tw, P)
            for ti in range(th):
                base = b * P_ + ti * tw
                # patch rows r = 0..3: parity planes (even, odd column) of rows ti (r = 0, 1), ti + 1 (r = 2, 3)
                e0, o0, e1, o1 = P[0, ti], P[1, ti], P[2, ti], P[3, ti]
                e2, o2, e3, o3 = P[0, ti + 1], P[1, ti + 1], P[2, ti + 1], P[3, ti + 1]
                # V[4a + k] = (Bᵀ u)[a, k] with u[r][k] = (d[r] B)[k]: a = 0: u0 − u2, 1: u1 + u2, 2: u2 − u1, 3: u1 − u3
                v = V[0, c, base : base + tw]
                for j in range(tw):
                    v[j] = (e0[j] - e0[j + 1]) - (e2[j] - e2[j + 1])
                v = V[1, c, base : base + tw]
                for j in range(tw):
                    v[j] = (o0[j] + e0[j + 1]) - (o2[j] + e2[j + 1])
                v = V[2, c, base : base + tw]
                for j in range(tw):
                    v[j] = (e0[j + 1] - o0[j]) - (e2[j + 1] - o2[j])
                v = V[3, c, base : base + tw]
                for j in range(tw):
                    v[j] = (o0[j] - o0[j + 1]) - (o2[j] - o2[j + 1])
                v = V[4, c, base : base + tw]
                for j in range(tw):
                    v[j] = (e1[j] - e1[j + 1]) + (e2[j] - e2[j + 1])
                v = V[5, c, base : base + tw]
                for j in range(tw):
                    v[j] = (o1[j] + e1[j + 1]) + (o2[j] + e2[j + 1])
                v = V[6, c, base : base + tw]
                for j in range(tw):
                    v[j] = (e1[j + 1] - o1[j]) + (e2[j + 1] - o2[j])
                v = V[7, c, base : base + tw]
                for j in range(tw):
                    v[j] = (o1[j] - o1[j + 1]) + (o2[j] - o2[j + 1])
                v = V[8, c, base : base + tw]
                for j in range(tw):
                    v[j] = (e2[j] - e2[j + 1]) - (e1[j] - e1[j + 1])
                v = V[9, c, base : base + tw]
                for j in range(tw):
                    v[j] = (o2[j] + e2[j + 1]) - (o1[j] + e1[j + 1])
                v = V[10, c, base : base + tw]
                for j in range(tw):
                    v[j] = (e2[j + 1] - o2[j]) - (e1[j + 1] - o1[j])
                v = V[11, c, base : base + tw]
                for j in range(tw):
                    v[j] = (o2[j] - o2[j + 1]) - (o1[j] - o1[j + 1])
                v = V[12, c, base : base + tw]
                for j in range(tw):
                    v[j] = (e1[j] - e1[j + 1]) - (e3[j] - e3[j + 1])
                v = V[13, c, base : base + tw]
                for j in range(tw):
                    v[j] = (o1[j] + e1[j + 1]) - (o3[j] + e3[j + 1])
                v = V[14, c, base : base + tw]
                for j in range(tw):
                    v[j] = (e1[j + 1] - o1[j]) - (e3[j + 1] - o3[j])
                v = V[15, c, base : base + tw]
                for j in range(tw):
                    v[j] = (o1[j] - o1[j + 1]) - (o3[j] - o3[j + 1])


@jit_inline
def _output_tiles(M, bias, n0, nb, th, tw, out):
    """out[n0+b, o, 2ti + a, 2tj + e] = (Aᵀ M[:, o, p] A)[a, e] + bias[o], p = b·th·tw + ti·tw + tj.

    Plain form: s = Aᵀ m (rows: m0 + m1 + m2, m1 − m2 − m3), y = s A (the same on columns);
    a last odd output row or column is dropped.
    """
    O, Ho, Wo = out.shape[1], out.shape[2], out.shape[3]
    P = th * tw
    for b in range(nb):
        for o in range(O):
            bo = bias[o]
            for ti in range(th):
                base = b * P + ti * tw
                r0 = out[n0 + b, o, 2 * ti]
                two = 2 * ti + 1 < Ho
                r1 = out[n0 + b, o, min(2 * ti + 1, Ho - 1)]
                m = M[:, o, base : base + tw]  # (16, tw)
                for tj in range(tw):
                    s00 = m[0, tj] + m[4, tj] + m[8, tj]
                    s01 = m[1, tj] + m[5, tj] + m[9, tj]
                    s02 = m[2, tj] + m[6, tj] + m[10, tj]
                    s03 = m[3, tj] + m[7, tj] + m[11, tj]
                    s10 = m[4, tj] - m[8, tj] - m[12, tj]
                    s11 = m[5, tj] - m[9, tj] - m[13, tj]
                    s12 = m[6, tj] - m[10, tj] - m[14, tj]
                    s13 = m[7, tj] - m[11, tj] - m[15, tj]
                    j = 2 * tj
                    r0[j] = s00 + s01 + s02 + bo
                    if j + 1 < Wo:
                        r0[j + 1] = s01 - s02 - s03 + bo
                    if two:
                        r1[j] = s10 + s11 + s12 + bo
                        if j + 1 < Wo:
                            r1[j + 1] = s11 - s12 - s13 + bo


@jit_serial
def _winograd_chunks(lo, hi, x, U, bias, ph, pw, th, tw, nb, out):
    """Chunks [lo, hi) of nb images each: V = input tiles, M[ξ] = U[ξ] @ V[ξ] (16 sgemms), output tiles."""
    N, C = x.shape[0], x.shape[1]
    O = U.shape[1]
    width = nb * th * tw
    vbuf = np.empty(16 * C * width, x.dtype)
    mbuf = np.empty(16 * O * width, x.dtype)
    P = np.empty((4, th + 1, tw + 1), x.dtype)  # the parity planes of one padded input plane
    for t in range(lo, hi):
        n0 = t * nb
        mb = min(nb, N - n0)
        L = mb * th * tw
        V = vbuf[: 16 * C * L].reshape((16, C, L))
        M = mbuf[: 16 * O * L].reshape((16, O, L))
        _input_tiles(x, n0, mb, ph, pw, th, tw, P, V)
        for xi in range(16):
            np.dot(U[xi], V[xi], M[xi])
        _output_tiles(M, bias, n0, mb, th, tw, out)


def winograd_conv3x3(x, U, bias, padding, out):
    """out (N, O, Ho, Wo) = conv2d(x, w, bias, stride 1, padding) from U = weight_transform(w); fills out.

    x C-contiguous (N, C, H, W); bias (O,) (zeros for none). Chunks of whole images, about
    ``tiles_per_chunk`` tiles wide, split over threads (at least one chunk per thread when N allows).
    """
    N = x.shape[0]
    ph, pw = padding
    Ho, Wo = out.shape[2], out.shape[3]
    th, tw = -(-Ho // 2), -(-Wo // 2)
    nb = max(1, min(tiles_per_chunk(x.shape[1], U.shape[1], x.itemsize) // (th * tw), -(-N // num_threads())))
    with blas_single_thread():
        parallel_for(_winograd_chunks, -(-N // nb), x, U, bias, ph, pw, th, tw, nb, out)
    return out
