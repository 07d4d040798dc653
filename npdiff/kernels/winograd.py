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

from .config import blas_single_thread, jit_serial, num_threads, parallel_for

# tiles per GEMM: measured 1024 faster than 256 on 16×16 and 32×32 outputs (the 16 GEMMs have
# inner dimension C only, so a wide GEMM is what keeps sgemm efficient)
TILES_PER_GEMM = 1024

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


@jit_serial
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


@jit_serial
def _input_tiles(x, n0, nb, ph, pw, th, tw, pad, V):
    """V[ξ, c, b·th·tw + ti·tw + tj] = (Bᵀ d B)[ξ] of the 4×4 patch at (2ti − ph, 2tj − pw) of x[n0+b, c].

    Per plane the padded rows are copied once into ``pad`` (zero border, 2·th + 2 rows and 2·tw + 2
    columns); then, per tile row, the column transform of the four patch rows is taken for all
    tiles of the row at once (vectors along tj), and the row transform combines them.
    Plain form: t = Bᵀ d (rows: d0 − d2, d1 + d2, d2 − d1, d1 − d3), V = t B (the same on columns).
    """
    C, W = x.shape[1], x.shape[3]
    Hp, Wp = 2 * th + 2, 2 * tw + 2
    P = th * tw
    cols = np.empty((4, 4, tw), x.dtype)  # [k, r, tj]: column combination k of patch row r
    for b in range(nb):
        for c in range(C):
            # 1. the padded plane
            lo = min(pw, Wp)
            hi = max(lo, min(Wp, pw + W))  # pad columns [lo, hi) hold x columns [0, hi − lo)
            copy_padded_rows(x, n0 + b, c, -ph, Hp, Wp, lo, hi, pad)
            for ti in range(th):
                # 2. column transform of the 4 patch rows r, for every tile of this tile row
                for r in range(4):
                    row = pad[2 * ti + r]
                    for tj in range(tw):
                        d0, d1, d2, d3 = row[2 * tj], row[2 * tj + 1], row[2 * tj + 2], row[2 * tj + 3]
                        cols[0, r, tj] = d0 - d2
                        cols[1, r, tj] = d1 + d2
                        cols[2, r, tj] = d2 - d1
                        cols[3, r, tj] = d1 - d3
                # 3. row transform: V[4a + k] from the four rows of column combination k
                base = b * P + ti * tw
                for k in range(4):
                    e = cols[k]
                    v0, v1 = V[k, c, base : base + tw], V[4 + k, c, base : base + tw]
                    v2, v3 = V[8 + k, c, base : base + tw], V[12 + k, c, base : base + tw]
                    for tj in range(tw):
                        v0[tj] = e[0, tj] - e[2, tj]
                        v1[tj] = e[1, tj] + e[2, tj]
                        v2[tj] = e[2, tj] - e[1, tj]
                        v3[tj] = e[1, tj] - e[3, tj]


@jit_serial
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
    pad = np.empty((2 * th + 2, 2 * tw + 2), x.dtype)
    for t in range(lo, hi):
        n0 = t * nb
        mb = min(nb, N - n0)
        L = mb * th * tw
        V = vbuf[: 16 * C * L].reshape((16, C, L))
        M = mbuf[: 16 * O * L].reshape((16, O, L))
        _input_tiles(x, n0, mb, ph, pw, th, tw, pad, V)
        for xi in range(16):
            np.dot(U[xi], V[xi], M[xi])
        _output_tiles(M, bias, n0, mb, th, tw, out)


def winograd_conv3x3(x, U, bias, padding, out):
    """out (N, O, Ho, Wo) = conv2d(x, w, bias, stride 1, padding) from U = weight_transform(w); fills out.

    x C-contiguous (N, C, H, W); bias (O,) (zeros for none). Chunks of whole images, about
    TILES_PER_GEMM tiles wide, split over threads (at least one chunk per thread when N allows).
    """
    N = x.shape[0]
    ph, pw = padding
    Ho, Wo = out.shape[2], out.shape[3]
    th, tw = -(-Ho // 2), -(-Wo // 2)
    nb = max(1, min(TILES_PER_GEMM // (th * tw), -(-N // num_threads())))
    with blas_single_thread():
        parallel_for(_winograd_chunks, -(-N // nb), x, U, bias, ph, pw, th, tw, nb, out)
    return out
