"""2-D convolution and transposed convolution (NCHW), forward and backward.

Notation (used in every docstring below):
  x: (N, C, H, W)          input, N images of C channels
  w: (O, C, kh, kw)        conv2d weight (O output channels)
  w: (C, O, kh, kw)        conv_transpose2d weight (C input, O output channels)
  b: (O,)                  optional bias
  s = (sh, sw), p = (ph, pw)   stride and zero padding; op = output_padding
  g                        gradient of the loss with respect to the op's output

conv2d          out[n,o,i,j] = b[o] + Σ_c Σ_u Σ_v x[n, c, sh·i+u−ph, sw·j+v−pw] · w[o,c,u,v]
                (x read as 0 outside the image),  Ho = ⌊(H + 2ph − kh)/sh⌋ + 1
conv_transpose2d is its adjoint in x: every input pixel scatters a weighted
                kernel into the output,
                out[n, o, sh·i+u−ph, sw·j+v−pw] += x[n,c,i,j] · w[c,o,u,v]   (+ b[o]),
                Ho = (H − 1)·sh − 2ph + kh + oph

Backward, read off the definitions:
  conv2d:  gx = conv_transpose2d(g, w)      (same stride/padding, output size of x)
           gw[o,c,u,v] = Σ_n Σ_i Σ_j g[n,o,i,j] · x[n, c, sh·i+u−ph, sw·j+v−pw]
           gb[o] = Σ_n Σ_i Σ_j g[n,o,i,j]
  conv_transpose2d:  gx = conv2d(g, w)      (w read as an (C, O, kh, kw) conv weight)
           gw = the conv2d weight gradient with the roles of x and g swapped.

The file reads top to bottom: reference loops (the oracle), the fast CPU path
(one parallel pass per call, ``config.parallel_for``: per-thread im2col + one-thread BLAS sgemm),
the xp-vectorised path (numpy or cupy), then the columns of the kernel table
(``table.py``; groups split here, once for both fast columns). Validation and the
choice of column are the one dispatch's (``dispatch.py``, ``checks.py``).

GPU twin: ``npdiff/kernels/cuda/conv.py`` (the table's ``cuda`` column: implicit-GEMM
kernels with shared-memory tiles (forward, grad-input, grad-weight)).
"""

from __future__ import annotations

import threading

import numpy as np

from ..backend import get_array_module
from .checks import conv2d_output_size, conv_transpose2d_output_size
from . import winograd, winograd4
from .winograd import copy_padded_rows
from .config import blas_single_thread, jit_helper, jit_inline, jit_serial, num_threads, parallel_for
from .gemm import matmul
from . import microgemm
from .microgemm import gemm

# ---------------------------------------------------------------------------
# reference: plain loops straight from the definitions (the oracle)


def conv2d_forward_reference(x, w, b=None, stride=(1, 1), padding=(0, 0), groups=1):
    """conv2d by its definition, one output element at a time.

    Shapes: x (N, C, H, W), w (O, C/groups, kh, kw), b (O,) or None -> (N, O, Ho, Wo).
    Definition: out[n,o,i,j] = b[o] + Σ_{c,u,v} xpad[n, c, sh·i+u, sw·j+v] · w[o,c,u,v],
    xpad = x with ph (pw) zero rows (columns) on each side; with groups, output
    channel o only reads the C/groups input channels of its group o // (O/groups).
    """
    (sh, sw), (ph, pw) = stride, padding
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    Og = O // groups
    Ho, Wo = conv2d_output_size(H, W, kh, kw, stride, padding)
    xpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    xpad[:, :, ph : ph + H, pw : pw + W] = x
    out = np.zeros((N, O, Ho, Wo), dtype=x.dtype)
    for n in range(N):
        for o in range(O):
            chans = slice(o // Og * Cg, (o // Og + 1) * Cg)  # the input channels of o's group
            for i in range(Ho):
                for j in range(Wo):
                    window = xpad[n, chans, sh * i : sh * i + kh, sw * j : sw * j + kw]  # (Cg, kh, kw)
                    out[n, o, i, j] = np.sum(window * w[o]) + (b[o] if b is not None else 0)
    return out


def _needed(grads, need):
    """(gx, gw, gb) with None where the caller did not ask for a gradient."""
    return tuple(a if n else None for a, n in zip(grads, need))


def conv2d_backward_reference(x, w, g, stride=(1, 1), padding=(0, 0), groups=1, need_x=True, need_w=True,
                              need_b=True):
    """Gradients (gx, gw, gb) of conv2d by the chain rule, one output element at a time.

    Each out[n,o,i,j] was Σ window·w[o]; so g[n,o,i,j] flows back as
    g·w[o] into the window of xpad it read, g·window into w[o], and g into b[o].
    """
    (sh, sw), (ph, pw) = stride, padding
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    Og = O // groups
    Ho, Wo = g.shape[2], g.shape[3]
    xpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    xpad[:, :, ph : ph + H, pw : pw + W] = x
    gxpad = np.zeros_like(xpad)
    gw = np.zeros_like(w)
    gb = np.zeros(O, dtype=g.dtype)
    for n in range(N):
        for o in range(O):
            chans = slice(o // Og * Cg, (o // Og + 1) * Cg)
            for i in range(Ho):
                for j in range(Wo):
                    gnoij = g[n, o, i, j]
                    rows, cols = slice(sh * i, sh * i + kh), slice(sw * j, sw * j + kw)
                    gxpad[n, chans, rows, cols] += gnoij * w[o]
                    gw[o] += gnoij * xpad[n, chans, rows, cols]
                    gb[o] += gnoij
    return _needed((gxpad[:, :, ph : ph + H, pw : pw + W].copy(), gw, gb), (need_x, need_w, need_b))


def conv_transpose2d_forward_reference(x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
                                       groups=1):
    """conv_transpose2d by its definition: every input pixel scatters a weighted kernel.

    Shapes: x (N, C, H, W), w (C, O/groups, kh, kw), b (O,) or None -> (N, O, Ho, Wo),
    Ho = (H − 1)·sh − 2ph + kh + oph. With groups, input channel c only writes
    the O/groups output channels of its group c // (C/groups).
    Definition: full[n, o, sh·i+u, sw·j+v] += x[n,c,i,j] · w[c,o,u,v] on an uncropped
    canvas, then out = full[..., ph : ph+Ho, pw : pw+Wo] + b[o].
    """
    (sh, sw), (ph, pw) = stride, padding
    N, C, H, W = x.shape
    _, Og, kh, kw = w.shape
    O, Cg = Og * groups, C // groups
    Ho, Wo = conv_transpose2d_output_size(H, W, kh, kw, stride, padding, output_padding)
    # the canvas holds every scattered window and the crop [ph, ph + Ho)
    full = np.zeros((N, O, max((H - 1) * sh + kh, ph + Ho), max((W - 1) * sw + kw, pw + Wo)), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            outs = slice(c // Cg * Og, (c // Cg + 1) * Og)  # the output channels of c's group
            for i in range(H):
                for j in range(W):
                    full[n, outs, sh * i : sh * i + kh, sw * j : sw * j + kw] += x[n, c, i, j] * w[c]
    out = full[:, :, ph : ph + Ho, pw : pw + Wo].copy()
    if b is not None:
        out += b[None, :, None, None]
    return out


def conv_transpose2d_backward_reference(x, w, g, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
                                        groups=1, need_x=True, need_w=True, need_b=True):
    """Gradients (gx, gw, gb) of conv_transpose2d, one input pixel at a time.

    x[n,c,i,j] added x·w[c] into a kh×kw window of the canvas, so it receives
    Σ window(g)·w[c]; w[c] receives Σ x[n,c,i,j]·window(g); b[o] receives Σ g[n,o].
    """
    (sh, sw), (ph, pw) = stride, padding
    N, C, H, W = x.shape
    _, Og, kh, kw = w.shape
    O, Cg = Og * groups, C // groups
    Ho, Wo = g.shape[2], g.shape[3]
    gfull = np.zeros((N, O, max((H - 1) * sh + kh, ph + Ho), max((W - 1) * sw + kw, pw + Wo)), dtype=g.dtype)
    gfull[:, :, ph : ph + Ho, pw : pw + Wo] = g
    gx = np.zeros_like(x)
    gw = np.zeros_like(w)
    for n in range(N):
        for c in range(C):
            outs = slice(c // Cg * Og, (c // Cg + 1) * Og)
            for i in range(H):
                for j in range(W):
                    window = gfull[n, outs, sh * i : sh * i + kh, sw * j : sw * j + kw]  # (Og, kh, kw)
                    gx[n, c, i, j] = np.sum(window * w[c])
                    gw[c] += x[n, c, i, j] * window
    return _needed((gx, gw, g.sum(axis=(0, 2, 3))), (need_x, need_w, need_b))


# ---------------------------------------------------------------------------
# fast CPU path: one parallel pass per call (config.parallel_for); each thread does its own im2col
# and a single-threaded BLAS sgemm (np.dot inside Numba)
#
# The im2col matrix of a chunk of `nb` images and output rows [i0, i0+ni) is
#   cols[k, b, r·Wo + j] = x[n0+b, c, sh·(i0+r)+u−ph, sw·j+v−pw],  k = (c·kh + u)·kw + v
# (zero outside the image), so conv2d over the chunk is ONE matrix product
#   res (O, nb·ni·Wo) = w.reshape(O, K) @ cols.reshape(K, nb·ni·Wo).
# For one whole image (nb = 1, ni = Ho) res IS out[n] in NCHW, so the product
# is written there directly; otherwise its rows (o, b, pixel) are copied out.
#
# Threads: parallel_for runs a serial driver on each of T threads; thread t takes a
# contiguous run of chunks and works in its own slice of a preallocated
# workspace (T, ...), calling BLAS held to one thread (config.blas_single_thread).
# One pool owns the cores for the whole call: handing them back and forth
# between Numba's OpenMP pool and OpenBLAS's pool after every chunk cost more
# than the GEMMs on 2 cores. Chunks are whole images while there are at least T
# of them (images smaller than 16×16 side by side, to keep the GEMM wide), else
# bands of output rows; the cols of one chunk stay near _CHUNK_BYTES.

_CHUNK_BYTES = 4 << 20
_GEMM_WIDTH = 256


# Numba note: an index such as ``row[base + j]`` may be negative as far as the
# compiler knows, so it adds Python's wraparound test to every access, which
# also stops vectorisation (~8x slower here). The kernels therefore slice a 1-D
# view first (``dst = cols[k, b, lo:hi]``) and index it with a plain range
# variable, which Numba knows is non-negative.


@jit_helper
def _im2col(x, n0, nb, i0, ni, kh, kw, sh, sw, ph, pw, Wo, pad, cols):
    """Fill cols (K, nb, ni·Wo) from x (N, C, H, W) for output rows [i0, i0+ni).

    Plain form: cols[k, b, r·Wo + j] = x[n0+b, c, sh·(i0+r)+u−ph, sw·j+v−pw], 0 outside.
    Per plane (b, c), the rows it reads are first copied once into the scratch
    ``pad`` with their zero border, pad[q, p] = x[n0+b, c, sh·i0−ph+q, p−pw];
    then every tap (u, v) is a branch-free copy of pad rows sh·r+u from column v
    (3× faster than clipping every tap at the border on 8×8 planes).
    """
    C, W = x.shape[1], x.shape[3]
    R, Wp = sh * (ni - 1) + kh, sw * (Wo - 1) + kw  # the padded rows and columns read
    lo = min(pw, Wp)
    hi = max(lo, min(Wp, pw + W))  # pad columns [lo, hi) hold x columns [0, hi − lo)
    for b in range(nb):
        for c in range(C):
            copy_padded_rows(x, n0 + b, c, sh * i0 - ph, R, Wp, lo, hi, pad)
            for u in range(kh):
                for v in range(kw):
                    block = cols[(c * kh + u) * kw + v, b]  # (ni·Wo,)
                    for r in range(ni):
                        dst, src = block[r * Wo : (r + 1) * Wo], pad[sh * r + u, v:]
                        if sw == 1:
                            for j in range(Wo):
                                dst[j] = src[j]
                        else:
                            for j in range(Wo):
                                dst[j] = src[sw * j]


@jit_helper
def _col2im(cols, n0, nb, i0, ni, kh, kw, sh, sw, ph, pw, Wo, r0, r1, pad, gx):
    """gx[n0+b, c, h, :] = Σ cols[k, b, r·Wo+j] over the (u, v, r, j) landing on (h, sw·j+v−pw), h in [r0, r1).

    The adjoint of _im2col, for the gx rows [r0, r1) the calling thread owns
    (neighbouring row bands read the same cols rows: the halo, recomputed).
    Each plane (b, c) is summed in the scratch ``pad`` (rows r0.., columns −pw..),
    branch-free along a row, and its inside then written to gx (every gx element
    exactly once: no zeroing pass, no races).
    """
    C, W = gx.shape[1], gx.shape[3]
    nr = r1 - r0
    for b in range(nb):
        for c in range(C):
            pad[:nr] = 0
            for u in range(kh):
                for v in range(kw):
                    block = cols[(c * kh + u) * kw + v, b]  # (ni·Wo,)
                    for r in range(ni):
                        h = sh * (i0 + r) + u - ph
                        if h < r0 or h >= r1:
                            continue
                        src, dst = block[r * Wo : (r + 1) * Wo], pad[h - r0, v:]
                        if sw == 1:
                            for j in range(Wo):
                                dst[j] += src[j]
                        else:
                            for j in range(Wo):
                                dst[sw * j] += src[j]
            for q in range(nr):
                src, dst = pad[q, pw : pw + W], gx[n0 + b, c, r0 + q]
                for m in range(W):
                    dst[m] = src[m]


@jit_inline
def _thread_chunks(tid, T, N, nb, n_rows, band):
    """The contiguous run [lo, hi) of the ceil(N/nb)·ceil(n_rows/band) chunks that thread tid takes."""
    items = -(-N // nb) * -(-n_rows // band)
    return tid * items // T, (tid + 1) * items // T


@jit_inline
def _chunk(t, N, nb, n_rows, band):
    """Chunk t -> (n0, images, first row, rows): image-major, then row bands."""
    bands = -(-n_rows // band)
    n0, r0 = t // bands * nb, t % bands * band
    return n0, min(nb, N - n0), r0, min(band, n_rows - r0)


@jit_helper
def _gather_rows(g3, n0, mb, p0, L, gt):
    """gt (O, mb·L) = g3[n0+b, o, p0 : p0+L] side by side; g3 (N, O, P) -> a view when it already is one."""
    if mb == 1 and L == g3.shape[2]:
        return g3[n0]
    O = g3.shape[1]
    out = gt[: O * mb * L].reshape((O, mb * L))
    for o in range(O):
        for b in range(mb):
            src, dst = g3[n0 + b, o, p0 : p0 + L], out[o, b * L : (b + 1) * L]
            for m in range(L):
                dst[m] = src[m]
    return out


@jit_serial
def _forward_chunks(t0, t1, own_gemm, x, w2, bias, kh, kw, sh, sw, ph, pw, Ho, Wo, nb, band, pad_ws, cols_ws, res_ws,
                    out3):
    """out3 (N, O, Ho·Wo) = w2 (O, K) @ im2col(x) + bias[o], chunk by chunk; workspace rows [t0, t1) (one per thread).
    The products by ``microgemm.gemm`` with ``own_gemm`` (``im2col_own_gemm_pays``), else by BLAS.

    Run by ``config.parallel_for`` over the T workspace rows (as are the two backward drivers below).
    """
    N = x.shape[0]
    O, K = w2.shape
    T = cols_ws.shape[0]
    for tid in range(t0, t1):
        lo, hi = _thread_chunks(tid, T, N, nb, Ho, band)
        for t in range(lo, hi):
            n0, mb, i0, mi = _chunk(t, N, nb, Ho, band)
            L = mi * Wo
            cols = cols_ws[tid, : K * mb * L].reshape((K, mb * L))
            _im2col(x, n0, mb, i0, mi, kh, kw, sh, sw, ph, pw, Wo, pad_ws[tid], cols.reshape((K, mb, L)))
            if mb == 1 and mi == Ho:  # one whole image: the product is out[n0] itself
                if own_gemm:  # (flags false, computed at run time: see microgemm.gemm)
                    gemm(w2, cols, out3[n0], not own_gemm, not own_gemm)
                else:
                    np.dot(w2, cols, out3[n0])
                for o in range(O):
                    dst, bo = out3[n0, o], bias[o]
                    for m in range(L):
                        dst[m] += bo
                continue
            res = res_ws[tid, : O * mb * L].reshape((O, mb * L))
            if own_gemm:
                gemm(w2, cols, res, not own_gemm, not own_gemm)
            else:
                np.dot(w2, cols, res)
            for o in range(O):
                for b in range(mb):
                    src, dst, bo = res[o, b * L : (b + 1) * L], out3[n0 + b, o, i0 * Wo : i0 * Wo + L], bias[o]
                    for m in range(L):
                        dst[m] = src[m] + bo


@jit_serial
def _weight_grad_chunks(t0, t1, x, g3, kh, kw, sh, sw, ph, pw, Ho, Wo, nb, band, pad_ws, cols_ws, gt_ws, prod_ws,
                        acc):
    """acc[t] (K, O) = Σ over thread t's chunks of im2col(x)_chunk (K, pixels) @ g_chunkᵀ (pixels, O).

    The caller sums acc over t and transposes: gw2 = gwᵀ. Computing the
    transpose measured 10-25% faster in OpenBLAS than g @ colsᵀ for K ≥ 288.
    """
    N = g3.shape[0]
    T, K, O = acc.shape
    for tid in range(t0, t1):  # parallel_for's share of the T workspace rows
        lo, hi = _thread_chunks(tid, T, N, nb, Ho, band)
        if hi <= lo:
            acc[tid] = 0
        for t in range(lo, hi):
            n0, mb, i0, mi = _chunk(t, N, nb, Ho, band)
            L = mi * Wo
            cols = cols_ws[tid, : K * mb * L].reshape((K, mb * L))
            _im2col(x, n0, mb, i0, mi, kh, kw, sh, sw, ph, pw, Wo, pad_ws[tid], cols.reshape((K, mb, L)))
            gt = _gather_rows(g3, n0, mb, i0 * Wo, L, gt_ws[tid])
            if t == lo:
                np.dot(cols, gt.T, acc[tid])
                continue
            prod, a = prod_ws[tid], acc[tid]
            np.dot(cols, gt.T, prod)
            for k in range(K):
                src, dst = prod[k], a[k]
                for o in range(O):
                    dst[o] += src[o]


@jit_serial
def _input_grad_chunks(t0, t1, own_gemm, g3, w2, kh, kw, sh, sw, ph, pw, Ho, Wo, nb, band, pad_ws, cols_ws, gt_ws,
                       gx):
    """gx (N, C, H, W) = col2im(w2ᵀ (K, O) @ g (O, pixels)), by chunks of whole images or bands of gx rows.

    A band of gx rows [r0, r1) receives from the output rows i with
    r0 <= sh·i + u − ph < r1 for some tap u, i.e. i in [⌈(r0+ph−kh+1)/sh⌉, ⌊(r1−1+ph)/sh⌋];
    each thread recomputes that halo and writes only its own rows (no races).
    """
    N, C, H, W = gx.shape
    K = w2.shape[1]
    T = cols_ws.shape[0]
    for tid in range(t0, t1):  # parallel_for's share of the T workspace rows
        lo, hi = _thread_chunks(tid, T, N, nb, H, band)
        for t in range(lo, hi):
            n0, mb, r0, nr = _chunk(t, N, nb, H, band)
            i0 = max(0, -((kh - 1 - r0 - ph) // sh))
            i1 = min(Ho, (r0 + nr - 1 + ph) // sh + 1)
            if i1 <= i0:  # rows no window reaches (stride > kernel)
                gx[n0 : n0 + mb, :, r0 : r0 + nr] = 0
                continue
            L = (i1 - i0) * Wo
            gt = _gather_rows(g3, n0, mb, i0 * Wo, L, gt_ws[tid])
            cols = cols_ws[tid, : K * mb * L].reshape((K, mb * L))
            if own_gemm:  # cols (K, pixels) = w2ᵀ @ gt, w2 (O, K) read transposed (trans_a, a run-time flag)
                gemm(w2, gt, cols, own_gemm, not own_gemm)
            else:
                np.dot(w2.T, gt, cols)
            _col2im(cols.reshape((K, mb, L)), n0, mb, i0, i1 - i0, kh, kw, sh, sw, ph, pw, Wo, r0, r0 + nr,
                    pad_ws[tid], gx)


_ws = threading.local()


def _workspace(role, shape, dtype):
    """A reused scratch array of ``shape`` (grow-only, one per role, dtype and calling thread)."""
    key = (role, np.dtype(dtype).str)
    size = int(np.prod(shape))
    buf = getattr(_ws, "bufs", None)
    if buf is None:
        buf = _ws.bufs = {}
    if key not in buf or buf[key].size < size:
        buf[key] = np.empty(size, dtype=dtype)
    return buf[key][:size].reshape(shape)


def _plan(N, Ho, Wo, K, itemsize, T):
    """(nb, band): images per chunk and output rows per chunk (band < Ho only when nb == 1).

    Whole images while there are at least T of them, batched only up to a GEMM
    _GEMM_WIDTH pixels wide (wider measured no faster: the gather/scatter copies
    cost what the GEMM gains), under _CHUNK_BYTES of cols, and so that the chunk
    count is a multiple of T (even work); otherwise bands of rows, at least T
    chunks in all.
    """
    per_image = K * Ho * Wo * itemsize
    if N >= T and per_image <= _CHUNK_BYTES:
        nb = max(1, min(_CHUNK_BYTES // per_image, -(-_GEMM_WIDTH // (Ho * Wo))))
        chunks = -(-N // nb)
        chunks = min(N, -(-chunks // T) * T)
        return -(-N // chunks), Ho
    bands = max(-(-per_image // _CHUNK_BYTES), -(-T // N))
    return 1, -(-Ho // min(Ho, bands))


def _is_pointwise(kh, kw, stride, padding):
    return kh == 1 and kw == 1 and stride == (1, 1) and padding == (0, 0)


def im2col_own_gemm_pays(O):
    """im2col's forward products w2 (O, K) @ cols (K, pixels) by ``microgemm.gemm`` (lanes: the pixels) where it
    beats the BLAS (``microgemm.beats_blas``), and for fewer than ROWS output channels wherever Numba compiles
    for AVX-512 (the rows all take microgemm's edge loop, which beat OpenBLAS's AVX-512 sgemm too: 64 -> 3
    on 32×32 0.53×). One thread, CPU time, the forward's chunk loop (``_im2col_matmul``), BLAS / microgemm ms,
    with OpenBLAS's AVX2 and AVX-512 kernels (load 4.7): 3 -> 64 on 64×64 N 16 2.79 / 2.60 and 2.12 / 3.14;
    1 -> 32 on 16×16 N 64 0.21 / 0.11 and 0.11 / 0.12; 32 -> 32 16×16 stride 2 N 64 1.86 / 1.29 and
    1.48 / 1.34; 64 -> 64 8×8 stride 2 1.45 / 1.14 and 1.11 / 1.03; 32 -> 1 on 16×16 0.97 / 1.01 and
    0.90 / 0.93; 64 -> 3 on 32×32 N 32 10.93 / 4.24 and 8.08 / 4.27."""
    return microgemm.beats_blas() or (O < microgemm.ROWS and microgemm.host_has_avx512())


def _im2col_matmul(x, w2, kh, kw, stride, padding, Ho, Wo, bias, out, own_gemm=None):
    """out (N, O, Ho, Wo) = w2 (O, K) @ im2col(x), + bias[o]; the shared conv2d forward."""
    (sh, sw), (ph, pw) = stride, padding
    N, (O, K), T = x.shape[0], w2.shape, num_threads()
    nb, band = _plan(N, Ho, Wo, K, x.itemsize, T)
    size = nb * band * Wo
    cols_ws = _workspace("cols", (T, K * size), x.dtype)
    res_ws = _workspace("res", (T, O * size), x.dtype)
    pad_ws = _workspace("pad", (T, sh * (band - 1) + kh, sw * (Wo - 1) + kw), x.dtype)
    with blas_single_thread():
        parallel_for(_forward_chunks, T, im2col_own_gemm_pays(O) if own_gemm is None else own_gemm, x, w2, bias,
                     kh, kw, sh, sw, ph, pw, Ho, Wo, nb, band, pad_ws, cols_ws, res_ws,
                     out.reshape(N, O, Ho * Wo))  # (N, O, P)
    return out


def _weight_grad(x, g, kh, kw, stride, padding):
    """gw2 (O, C·kh·kw) = (Σ_n im2col(x[n]) (K, P) @ g[n]ᵀ (P, O))ᵀ: per-thread sums, then their total."""
    (sh, sw), (ph, pw) = stride, padding
    N, O, Ho, Wo = g.shape
    K, T = x.shape[1] * kh * kw, num_threads()
    nb, band = _plan(N, Ho, Wo, K, x.itemsize, T)
    size = nb * band * Wo
    acc = np.empty((T, K, O), dtype=x.dtype)
    with blas_single_thread():
        parallel_for(_weight_grad_chunks, T, x, g.reshape(N, O, Ho * Wo), kh, kw, sh, sw, ph, pw, Ho, Wo, nb, band,
                            _workspace("pad", (T, sh * (band - 1) + kh, sw * (Wo - 1) + kw), x.dtype),
                            _workspace("cols", (T, K * size), x.dtype), _workspace("res", (T, O * size), x.dtype),
                            _workspace("gw", (T, K, O), x.dtype), acc)
    return np.ascontiguousarray(acc.sum(axis=0).T)  # (O, K)


# Few taps, pixels major. When C·kh·kw ≤ LANES (the stems: 3×3 kernels on 1 to 3 channels), im2col's weight
# gradient is a GEMM of inner dimension "pixels" between two matrices that both keep the pixels contiguous,
# (K, P) @ (P, O) read transposed, which the BLAS runs at well under its peak (82 GFLOP/s with OpenBLAS's AVX2
# kernels, 27 × 4096 × 64). Laid out pixels major instead, colsᵀ[p, k] (P, 32) with zero columns from K to 32,
#     accᵀ (O, 32) += g (O, P) @ colsᵀ (P, 32),   gw2 = accᵀ[:, :K]
# is microgemm's form (output channels in rows, the 32 padded taps in one register block of lanes).
@jit_serial
def _weight_grad_taps_last_chunks(t0, t1, trans_a, x, g3, kh, kw, sh, sw, ph, pw, Ho, Wo, band, acc):
    """acc[t] (O, LANES) = Σ over thread t's images, bands of ``band`` output rows, of g (O, pixels) @ colsᵀ
    (pixels, LANES); colsᵀ[r·Wo + j, (c·kh + u)·kw + v] = xpad[n, c, sh·(i0 + r) + u, sw·j + v], 0 in the
    columns past C·kh·kw. ``trans_a`` is false (a run-time flag for microgemm.gemm)."""
    N, C, H, W = x.shape
    T, O, KP = acc.shape
    R, Wp = sh * (band - 1) + kh, sw * (Wo - 1) + kw  # the padded rows and columns one band reads
    lo = min(pw, Wp)
    hi = max(lo, min(Wp, pw + W))  # pad columns [lo, hi) hold x columns [0, hi − lo)
    pad = np.empty((C, R, Wp), x.dtype)
    cols_t = np.zeros((band * Wo, KP), x.dtype)  # columns K..KP stay 0
    gt = np.empty(O * band * Wo, x.dtype)
    for tid in range(t0, t1):
        n_lo, n_hi = tid * N // T, (tid + 1) * N // T
        if n_hi <= n_lo:
            acc[tid] = 0
        first = True
        for n in range(n_lo, n_hi):
            for i0 in range(0, Ho, band):
                ni = min(band, Ho - i0)
                for c in range(C):
                    copy_padded_rows(x, n, c, sh * i0 - ph, sh * (ni - 1) + kh, Wp, lo, hi, pad[c])
                for r in range(ni):
                    for j in range(Wo):
                        dst = cols_t[r * Wo + j]
                        for c in range(C):
                            for u in range(kh):
                                src = pad[c, sh * r + u]
                                for v in range(kw):
                                    dst[(c * kh + u) * kw + v] = src[sw * j + v]
                L = ni * Wo
                gn = _gather_rows(g3, n, 1, i0 * Wo, L, gt)  # (O, L)
                gemm(gn, cols_t[:L], acc[tid], trans_a, not first)
                first = False


TAPS_LAST_PIXELS = 2048  # pixels per band of colsᵀ: 256 KB in float32, in L2 while microgemm reads it 16 times


def taps_last_pays(C, kh, kw, O):
    """The pixels-major weight gradient above for C·kh·kw ≤ LANES taps and at least ROWS output channels, where
    microgemm beats the BLAS (``microgemm.beats_blas``), and for at least 2 input channels: on one (the digits
    UNet's first conv, 1 -> 32 on 16×16) it measured 0.36 -> 0.33 ms, not worth the 1.4 s its driver takes to
    compile in the default run's cold start. Measured in docs/kernels.md."""
    return 2 <= C and C * kh * kw <= microgemm.LANES and O >= microgemm.ROWS and microgemm.beats_blas()


def _weight_grad_taps_last(x, g, kh, kw, stride, padding):
    """gw2 (O, C·kh·kw) by ``_weight_grad_taps_last_chunks``: per-thread sums, then their total."""
    (sh, sw), (ph, pw) = stride, padding
    N, O, Ho, Wo = g.shape
    K, T = x.shape[1] * kh * kw, num_threads()
    band = max(1, min(Ho, TAPS_LAST_PIXELS // Wo))  # colsᵀ of at most TAPS_LAST_PIXELS pixels (or one row)
    acc = np.empty((T, O, microgemm.LANES), x.dtype)
    with blas_single_thread():
        parallel_for(_weight_grad_taps_last_chunks, T, False, x, g.reshape(N, O, Ho * Wo), kh, kw, sh, sw, ph, pw,
                     Ho, Wo, band, acc)
    return np.ascontiguousarray(acc.sum(axis=0)[:, :K])  # (O, K)


def input_grad_own_gemm_pays(O, pixels, itemsize):
    """im2col's grad-input products w2ᵀ (K, O) @ g (O, pixels) by ``microgemm.gemm`` (w2 read transposed) where it
    beats the BLAS, or with fewer than ROWS output channels (an inner dimension BLAS runs badly) on any AVX-512
    host, while a chunk's g (O, pixels) fits in 512 KB (microgemm reads it once per 4 rows of K). One thread,
    CPU time, BLAS / microgemm ms, AVX2 and AVX-512 sgemm (load 5.7-6.0): 32 -> 32 16×16 stride 2 N64 1.66 /
    1.32 and 1.28 / 1.23; 64 -> 64 8×8 stride 2 1.26 / 1.16 and 0.93 / 1.05; 64 -> 3 on 32×32 N32 4.80 / 3.24
    and 5.28 / 3.05; 8 -> 32 16×16 N64 1.10 / 0.61 and 0.50 / 0.52; but the stem 3 -> 64 on 64×64 (g 1 MB a
    chunk) 3.86 / 4.64 and 2.81 / 3.33."""
    few = O < microgemm.ROWS and microgemm.host_has_avx512()
    return (microgemm.beats_blas() or few) and O * pixels * itemsize <= 512 << 10


def _input_grad(g, w2, kh, kw, stride, padding, gx, own_gemm=None):
    """gx = col2im(w2ᵀ @ g): conv_transpose2d of g (N, O, Ho, Wo) with w2 (O, C·kh·kw); fills gx."""
    (sh, sw), (ph, pw) = stride, padding
    N, O, Ho, Wo = g.shape
    K, T = w2.shape[1], num_threads()
    nb, band = _plan(N, Ho, Wo, K, g.itemsize, T)
    if band < Ho:  # bands of gx rows; each reads (band + kh − 2)/sh + 1 rows of g at most
        band = max(1, band * sh)
        rows = min(Ho, (band + kh - 2) // sh + 1)
    else:
        band, rows = gx.shape[2], Ho
    size = nb * rows * Wo
    own = input_grad_own_gemm_pays(O, size, g.itemsize) if own_gemm is None else own_gemm
    with blas_single_thread():
        parallel_for(_input_grad_chunks, T, own,
                     g.reshape(N, O, Ho * Wo), w2, kh, kw, sh, sw, ph, pw, Ho, Wo, nb, band,
                           _workspace("pad", (T, band, max(gx.shape[3] + 2 * pw, sw * (Wo - 1) + kw)), g.dtype),
                           _workspace("cols", (T, K * size), g.dtype), _workspace("res", (T, O * size), g.dtype), gx)
    return gx


# Which algorithm a 3×3 stride-1 convolution takes (decided once per call from the shapes).
# Winograd F(4×4, 3×3) (``winograd4.py``) does 4× fewer multiplies than the direct sum in 36 GEMMs of
# inner dimension C (forward, grad-input) or of the tile count (grad-weight), plus input and output
# transforms: short linear combinations, vectorised over the channels (channels last), so their cost
# per tile does not depend on the plane's width. It pays wherever the channel loops are long enough:
# measured in-process against im2col, F(2×2, 3×3) and the batch-last GEMM, one thread, CPU time
# (``benchmarks/conv_algorithms.py --algos --clock cpu --threads 1 --repeats 5``, load average 5.9),
# F(4×4) ms / the fastest other algorithm's ms, forward, grad-input, grad-weight:
#                          AVX2 sgemm (OPENBLAS_CORETYPE=Haswell)        AVX-512 sgemm (unset)
#   64→64 16×16, N 64     4.97/9.96  5.18/10.39 6.09/12.34     4.08/6.46  3.38/6.62  3.77/7.56
#   128→128 8×8, N 64     4.37/8.94  4.32/8.99  4.50/11.67     3.27/5.63  2.80/5.50  2.76/7.24
#   32→64 32×32, N 32     6.49/12.63 7.43/11.62 7.45/11.78     5.55/7.90  5.85/7.70  5.07/7.38
#   32→32 16×16, N 64     1.60/3.67  1.74/3.59  2.28/3.85      1.36/2.61  1.29/2.47  1.45/2.64
#   96→32 16×16, N 64     4.68/9.95  4.17/8.40  5.49/10.82     3.83/6.31  2.76/5.64  3.44/7.50
#   128→64 8×8, N 64      2.47/5.75  2.30/4.96  2.67/6.83      1.85/3.80  1.53/3.41  1.60/4.64
#   64→64 8×8, N 32       0.66/1.57  0.68/1.56  0.75/1.64      0.49/1.14  0.43/1.11  0.44/1.17
#   64→64 4×4, N 64       0.40/0.86  0.40/0.98  0.47/0.91      0.35/0.67  0.31/0.71  0.30/0.76
#   128→64 4×4, N 64      0.71/1.83  0.75/1.70  0.84/1.79      0.60/1.60  0.59/1.33  0.55/1.63
# and below 32 channels (``--algos`` on these shapes, load 5.7): 16→16 16×16 0.94/1.66 0.88/1.27 1.15/1.36
# (AVX2), 0.83/0.89 0.88/0.90 0.90/1.12 (AVX-512); 32→16 16×16 1.39/3.37 1.28/2.50 1.70/2.65 and
# 1.16/2.41 1.06/1.85 1.21/2.07; but 8→32 16×16 0.95/1.19 1.23/1.23 1.15/1.18 and 0.87/0.66 0.98/0.69
# 0.89/0.87 (im2col's single GEMM of inner dimension 9C wins when C is 8); planes of 2×2 (one tile,
# three quarters of it past the edge) go to the batch-last GEMM (64→64: 0.70 against 0.22 ms).
# Rule: F(4×4, 3×3) for the forward, grad-input and grad-weight of every 3×3 stride-1 conv (padding
# ≤ 2) with at least 16 channels in and out and an output plane of at least 4×4. F(2×2, 3×3)
# (``winograd.py``) is slower than F(4×4, 3×3) on every shape measured; it stays as the table's
# ``winograd`` column (``algorithm="winograd"``), not taken by the rule.
# Memory: U is 36·C_in·C_out floats (4× the weights), and the weight gradient keeps one such accumulator
# per thread (im2col's: 9·C_in·C_out each); above WINOGRAD4_MAX_BYTES (a Stable-Diffusion-sized 1280→1280
# conv would need 236 MB per thread) the conv stays on im2col.
# ``algorithm`` names that force F(4×4, 3×3), and how its 36 products (and im2col's forward products, on the
# shapes Winograd does not compute) run: None by ``winograd4.own_gemm_pays`` / ``im2col_own_gemm_pays`` (the
# register-blocked ``microgemm.gemm`` where it beats the BLAS), True always by ``microgemm.gemm`` (the table's
# ``winograd4_microgemm`` column, so that the harness checks it on every drawn shape), False always by BLAS.
WINOGRAD4 = {"winograd4": None, "winograd4_microgemm": True, "winograd4_blas": False}  # _blas: benchmarks
WINOGRAD4_MIN_SIZE = 4  # min(Ho, Wo)
WINOGRAD4_MIN_CHANNELS = 16  # min(C_in, C_out)
WINOGRAD4_MAX_BYTES = 128 << 20  # 36·C_in·C_out·itemsize, times the threads for the weight gradient


def winograd_applies(kh, kw, stride, padding):
    """Winograd (F(2×2, 3×3) or F(4×4, 3×3)) computes this conv and its gradients (3×3, stride 1, padding ≤ 2)."""
    return kh == 3 and kw == 3 and stride == (1, 1) and max(padding) <= 2


def winograd4_pays(c_in, c_out, Ho, Wo, itemsize=4, copies=1):
    """The measured rule above: F(4×4, 3×3) for a conv of c_in -> c_out channels with an Ho×Wo output (the
    grad-input, a conv from C_out to C_in channels on the input plane, asks with those), if ``copies`` of
    its transformed weights (the weight gradient: one per thread) fit in WINOGRAD4_MAX_BYTES."""
    return (min(Ho, Wo) >= WINOGRAD4_MIN_SIZE and min(c_in, c_out) >= WINOGRAD4_MIN_CHANNELS
            and 36 * c_in * c_out * itemsize * copies <= WINOGRAD4_MAX_BYTES)


# Small planes, batch last. On a plane of at most SMALL_PLANE output pixels (4×4: the lowest level of
# the UNets) every loop of the per-image im2col above is 4 wide: the copies cost more than the GEMM.
# Laid out with the batch innermost, xb[c, h, w, n] = x[n, c, h, w], the im2col row of a tap (c, u, v)
# is Ho slices of Wo·N contiguous floats of the padded xb (one numpy slice copy per tap for all
# channels), and the whole batch is ONE GEMM, its columns (i, j, n):
#     res (O, Ho·Wo·N) = w2 (O, K) @ cols (K, Ho·Wo·N),   out[n, o, i, j] = res[o, i, j, n] + b[o]
#     gw2 (O, K) = gb (O, Ho·Wo·N) @ colsᵀ,                 gb[o, i, j, n] = g[n, o, i, j]
#     gcols (K, Ho·Wo·N) = w2ᵀ @ gb, summed back tap by tap into the padded (C, Hp, Wp, N) gx
# (``gemm.matmul``: rows over threads, one-thread sgemm each). The price is three transposing copies
# (x, g, gx), each one pass. Measured in-process (one thread, CPU time, OpenBLAS AVX2 sgemm; the im2col
# path / this one, forward and backward, ms): 64→64 on 4×4, N 64: 1.23 / 0.78 and 2.34 / 1.83;
# 128→64 on 4×4: 2.45 / 1.59 and 4.64 / 3.56; on 8×8 it no longer pays (64→64: 3.13 / 3.20 and
# 6.65 / 7.78), so the rule is Ho·Wo ≤ 16.
SMALL_PLANE = 16


def small_plane_pays(Ho, Wo):
    """The batch-last path (above) takes convs with at most SMALL_PLANE output pixels."""
    return Ho * Wo <= SMALL_PLANE


def _padded_batch_last(a, ph, pw, Hp, Wp):
    """(C, Hp, Wp, N) with [c, ph + h, pw + w, n] = a[n, c, h, w] and zeros around (Hp, Wp ≥ the padded size)."""
    N, C, H, W = a.shape
    ab = np.zeros((C, Hp, Wp, N), a.dtype)
    ab[:, ph : ph + H, pw : pw + W, :] = a.transpose(1, 2, 3, 0)  # (C, H, W, N)
    return ab


def _cols_batch_last(x, kh, kw, stride, padding, Ho, Wo):
    """cols (C·kh·kw, Ho·Wo·N): cols[(c·kh + u)·kw + v, (i·Wo + j)·N + n] = xpad[n, c, sh·i+u, sw·j+v]."""
    (sh, sw), (ph, pw) = stride, padding
    N, C, H, W = x.shape
    xb = _padded_batch_last(x, ph, pw, max(H + 2 * ph, sh * (Ho - 1) + kh), max(W + 2 * pw, sw * (Wo - 1) + kw))
    cols = np.empty((C, kh, kw, Ho, Wo, N), x.dtype)
    for u in range(kh):
        for v in range(kw):
            cols[:, u, v] = xb[:, u : u + sh * (Ho - 1) + 1 : sh, v : v + sw * (Wo - 1) + 1 : sw, :]
    return cols.reshape(C * kh * kw, Ho * Wo * N)


def _forward_batch_last(x, w2, kh, kw, stride, padding, bias, out):
    """out (N, O, Ho, Wo) = conv2d by one GEMM over the whole batch, batch-last layout (see above)."""
    N, O, Ho, Wo = out.shape
    res = matmul(w2, _cols_batch_last(x, kh, kw, stride, padding, Ho, Wo))  # (O, Ho·Wo·N)
    np.add(res.reshape(O, Ho, Wo, N).transpose(3, 0, 1, 2), bias[:, None, None], out=out)  # (N, O, Ho, Wo)
    return out


def _backward_batch_last(x, w2, g, kh, kw, stride, padding, need_x, need_w):
    """(gx, gw2) of conv2d by the batch-last GEMMs (see above); None where not needed."""
    (sh, sw), (ph, pw) = stride, padding
    N, C, H, W = x.shape
    O, Ho, Wo = g.shape[1], g.shape[2], g.shape[3]
    gx = gw2 = None
    if not (need_x or need_w):
        return gx, gw2
    gb = np.ascontiguousarray(g.transpose(1, 2, 3, 0)).reshape(O, Ho * Wo * N)  # (O, Ho·Wo·N)
    if need_w:
        gw2 = matmul(gb, _cols_batch_last(x, kh, kw, stride, padding, Ho, Wo).T)  # (O, K)
    if need_x:
        gcols = matmul(np.ascontiguousarray(w2.T), gb).reshape(C, kh, kw, Ho, Wo, N)  # (C, kh, kw, Ho, Wo, N)
        Hp, Wp = max(H + 2 * ph, sh * (Ho - 1) + kh), max(W + 2 * pw, sw * (Wo - 1) + kw)
        gxb = np.zeros((C, Hp, Wp, N), x.dtype)  # the padded gx, batch last
        for u in range(kh):
            for v in range(kw):
                gxb[:, u : u + sh * (Ho - 1) + 1 : sh, v : v + sw * (Wo - 1) + 1 : sw, :] += gcols[:, u, v]
        gx = np.ascontiguousarray(gxb[:, ph : ph + H, pw : pw + W, :].transpose(3, 0, 1, 2))  # (N, C, H, W)
    return gx, gw2


def conv2d_forward_cpu(x, w, b, stride, padding, out, algorithm="auto"):
    """Fast conv2d: fills ``out`` (N, O, Ho, Wo).

    Shapes and definition: see conv2d_forward_reference.
    Fast path: one parallel pass; each thread builds the im2col cols
    (C·kh·kw, pixels) of its chunks (whole images or row bands) and multiplies
    w.reshape(O, K) @ cols with a one-thread sgemm, straight into out[n] for a
    whole image (already NCHW), then adds the bias.
    A 1×1 stride-1 unpadded conv needs no im2col: out[n] = w (O, C) @ x[n] (C, H·W),
    a stacked matmul straight into ``out``.
    3×3 stride-1 convs take Winograd F(4×4, 3×3) (``winograd4.py``) where ``winograd4_pays``
    (``algorithm="auto"``), or always (``"winograd4"``); F(2×2, 3×3) (``winograd.py``) only with
    ``"winograd"``; never with ``"im2col"``. Other outputs of at most SMALL_PLANE pixels take the
    batch-last single GEMM (``small_plane_pays``; always with ``"batch_last"``).
    """
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    Ho, Wo = out.shape[2], out.shape[3]
    w2 = w.reshape(O, C * kh * kw)  # (O, K)
    bias = b if b is not None else np.zeros(O, dtype=x.dtype)
    if _is_pointwise(kh, kw, stride, padding):
        out3 = out.reshape(N, O, H * W)  # (N, O, P)
        np.matmul(w2, x.reshape(N, C, H * W), out=out3)
        if b is not None:
            out3 += b[:, None]
        return out
    if winograd_applies(kh, kw, stride, padding):
        if algorithm in WINOGRAD4 or (algorithm == "auto" and winograd4_pays(C, O, Ho, Wo, x.itemsize)):
            return winograd4.winograd4_conv3x3(x, winograd4.weight_transform(w), bias, padding, out,
                                               WINOGRAD4.get(algorithm))
        if algorithm == "winograd":
            return winograd.winograd_conv3x3(x, winograd.weight_transform(w), bias, padding, out)
    if algorithm == "batch_last" or (algorithm == "auto" and small_plane_pays(Ho, Wo)):
        return _forward_batch_last(x, w2, kh, kw, stride, padding, bias, out)
    return _im2col_matmul(x, w2, kh, kw, stride, padding, Ho, Wo, bias, out, WINOGRAD4.get(algorithm))


def conv2d_backward_cpu(x, w, g, stride, padding, need_x=True, need_w=True, need_b=True, algorithm="auto"):
    """Fast conv2d backward -> (gx, gw, gb), None where not needed.

    gx is conv_transpose2d(g, w): per chunk a one-thread sgemm w2ᵀ @ g then
    col2im, each thread owning whole images or bands of gx rows (no races).
    gwᵀ sums cols @ g_chunkᵀ in one accumulator per thread, added up at the end
    (im2col(x) recomputed, not stored by forward). gb sums g over (n, i, j).
    1×1 stride-1 convs use stacked matmuls directly. For 3×3 stride-1 convs gx is itself a
    3×3 stride-1 conv, of g with the flipped, transposed kernel and padding 2 − p, and gw the
    derivative of the Winograd forward's tiles, so both take Winograd F(4×4, 3×3) where
    ``winograd4_pays`` (``algorithm="auto"``, or always with ``"winograd4"``; ``"winograd"``: gx by
    F(2×2, 3×3), gw by im2col). Other small output planes (``small_plane_pays``) take the batch-last
    GEMMs for both gx and gw.
    """
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    Ho, Wo = g.shape[2], g.shape[3]
    w2 = w.reshape(O, C * kh * kw)  # (O, K)
    gx = gw = gb = None
    wino = winograd_applies(kh, kw, stride, padding)
    auto = algorithm == "auto"
    f4_x = wino and (algorithm in WINOGRAD4 or (auto and winograd4_pays(O, C, H, W, x.itemsize)))  # a conv O -> C
    f4_w = wino and (algorithm in WINOGRAD4 or (auto and winograd4_pays(C, O, Ho, Wo, x.itemsize, num_threads())))
    own_gemm = WINOGRAD4.get(algorithm)  # None: microgemm's rule
    if _is_pointwise(kh, kw, stride, padding):
        g3 = g.reshape(N, O, H * W)  # (N, O, P)
        x3 = x.reshape(N, C, H * W)  # (N, C, P)
        if need_x:
            gx = np.matmul(w2.T, g3).reshape(N, C, H, W)
        if need_w:
            gw = np.matmul(g3, x3.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)  # Σ_n (O, C)
    elif algorithm == "batch_last" or (auto and small_plane_pays(Ho, Wo) and not (f4_x or f4_w)):
        gx, gw2 = _backward_batch_last(x, w2, g, kh, kw, stride, padding, need_x, need_w)
        gw = None if gw2 is None else gw2.reshape(w.shape)
    else:
        gx_pad = (2 - padding[0], 2 - padding[1])  # gx = conv2d(g, w̃, padding 2 − p), w̃ flipped, transposed
        if need_x and f4_x:
            gx = winograd4.winograd4_conv3x3(g, winograd4.weight_transform(w, flip=True), np.zeros(C, x.dtype),
                                             gx_pad, np.empty_like(x), own_gemm)
        elif need_x and wino and algorithm == "winograd":
            gx = winograd.winograd_conv3x3(g, winograd.weight_transform(w, flip=True), np.zeros(C, x.dtype), gx_pad,
                                           np.empty_like(x))
        elif need_x:
            gx = _input_grad(g, w2, kh, kw, stride, padding, np.empty_like(x), own_gemm)
        if need_w and f4_w:
            gw = winograd4.winograd4_weight_grad(x, g, padding, own_gemm)
        elif need_w and C * kh * kw <= microgemm.LANES and (own_gemm or (own_gemm is None and
                                                                     taps_last_pays(C, kh, kw, O))):
            gw = _weight_grad_taps_last(x, g, kh, kw, stride, padding).reshape(w.shape)
        elif need_w:
            gw = _weight_grad(x, g, kh, kw, stride, padding).reshape(w.shape)
    if need_b:
        gb = g.sum(axis=(0, 2, 3))
    return gx, gw, gb


def conv_transpose2d_forward_cpu(x, w, b, stride, padding, out):
    """Fast conv_transpose2d: fills ``out`` (N, O, Ho, Wo).

    It is conv2d's grad-input with x in the role of g: one-thread sgemm
    w.reshape(C, O·kh·kw)ᵀ @ x per chunk then col2im (_input_grad), then the bias.
    """
    C, O, kh, kw = w.shape
    _input_grad(x, w.reshape(C, O * kh * kw), kh, kw, stride, padding, out)
    if b is not None:
        out += b[None, :, None, None]
    return out


def conv_transpose2d_backward_cpu(x, w, g, stride, padding, need_x=True, need_w=True, need_b=True):
    """Fast conv_transpose2d backward -> (gx, gw, gb), reusing the conv2d kernels.

    gx = conv2d(g, w) with w (C, O, kh, kw) read as a conv weight (im2col + sgemm);
    gw[c, o, u, v] = Σ x[n,c,i,j] · g[n, o, sh·i+u−ph, sw·j+v−pw] is conv2d's
    weight gradient with x as "grad_out" and g as "input" (_weight_grad).
    """
    gx = gw = gb = None
    if need_x:
        gx = conv2d_forward_cpu(g, w, None, stride, padding, np.empty_like(x))
    if need_w:
        gw = _weight_grad(g, x, w.shape[2], w.shape[3], stride, padding).reshape(w.shape)
    if need_b:
        gb = g.sum(axis=(0, 2, 3))
    return gx, gw, gb


# ---------------------------------------------------------------------------
# xp-vectorised path (numpy or cupy): im2col by kh·kw strided slices + tensordot


def _im2col_xp(xp, x, kh, kw, stride, padding, Ho, Wo):
    """cols (N, C, kh, kw, Ho, Wo) with cols[n,c,u,v,i,j] = xpad[n, c, sh·i+u, sw·j+v]."""
    (sh, sw), (ph, pw) = stride, padding
    N, C, H, W = x.shape
    xpad = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    xpad[:, :, ph : ph + H, pw : pw + W] = x
    cols = xp.empty((N, C, kh, kw, Ho, Wo), dtype=x.dtype)
    for u in range(kh):
        for v in range(kw):
            cols[:, :, u, v] = xpad[:, :, u : u + sh * (Ho - 1) + 1 : sh, v : v + sw * (Wo - 1) + 1 : sw]
    return cols


def _col2im_xp(xp, cols, H, W, stride, padding):
    """Adjoint of _im2col_xp: cols (N, C, kh, kw, Ho, Wo) summed into (N, C, H, W)."""
    (sh, sw), (ph, pw) = stride, padding
    N, C, kh, kw, Ho, Wo = cols.shape
    Hp = max(H + 2 * ph, sh * (Ho - 1) + kh)
    Wp = max(W + 2 * pw, sw * (Wo - 1) + kw)
    gpad = xp.zeros((N, C, Hp, Wp), dtype=cols.dtype)
    for u in range(kh):
        for v in range(kw):
            gpad[:, :, u : u + sh * (Ho - 1) + 1 : sh, v : v + sw * (Wo - 1) + 1 : sw] += cols[:, :, u, v]
    return gpad[:, :, ph : ph + H, pw : pw + W]


def _conv2d_forward_xp_one(x, w, b=None, stride=(1, 1), padding=(0, 0)):
    """conv2d with array-module ops only (runs on numpy and cupy)."""
    xp = get_array_module(x, w)
    O, _, kh, kw = w.shape
    Ho, Wo = conv2d_output_size(x.shape[2], x.shape[3], kh, kw, stride, padding)
    cols = _im2col_xp(xp, x, kh, kw, stride, padding, Ho, Wo)
    out = xp.tensordot(w, cols, axes=([1, 2, 3], [1, 2, 3]))  # (O, N, Ho, Wo)
    out = xp.ascontiguousarray(out.transpose(1, 0, 2, 3))  # (N, O, Ho, Wo)
    if b is not None:
        out += b[None, :, None, None]
    return out


def _conv2d_backward_xp_one(x, w, g, stride=(1, 1), padding=(0, 0), need_x=True, need_w=True, need_b=True):
    """conv2d gradients (gx, gw, gb) with array-module ops only."""
    xp = get_array_module(x, w, g)
    O, _, kh, kw = w.shape
    Ho, Wo = g.shape[2], g.shape[3]
    gx = gw = gb = None
    if need_x:
        gcols = xp.tensordot(w, g, axes=([0], [1]))  # (C, kh, kw, N, Ho, Wo)
        gcols = gcols.transpose(3, 0, 1, 2, 4, 5)  # (N, C, kh, kw, Ho, Wo)
        gx = xp.ascontiguousarray(_col2im_xp(xp, gcols, x.shape[2], x.shape[3], stride, padding))
    if need_w:
        cols = _im2col_xp(xp, x, kh, kw, stride, padding, Ho, Wo)
        gw = xp.tensordot(g, cols, axes=([0, 2, 3], [0, 4, 5]))  # (O, C, kh, kw)
    if need_b:
        gb = g.sum(axis=(0, 2, 3))
    return gx, gw, gb


def _conv_transpose2d_forward_xp_one(x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0)):
    """conv_transpose2d with array-module ops only: col2im(wᵀ x)."""
    xp = get_array_module(x, w)
    _, O, kh, kw = w.shape
    Ho, Wo = conv_transpose2d_output_size(x.shape[2], x.shape[3], kh, kw, stride, padding, output_padding)
    cols = xp.tensordot(w, x, axes=([0], [1]))  # (O, kh, kw, N, H, W)
    cols = cols.transpose(3, 0, 1, 2, 4, 5)  # (N, O, kh, kw, H, W)
    out = xp.ascontiguousarray(_col2im_xp(xp, cols, Ho, Wo, stride, padding))
    if b is not None:
        out += b[None, :, None, None]
    return out


def _conv_transpose2d_backward_xp_one(x, w, g, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
                                 need_x=True, need_w=True, need_b=True):
    """conv_transpose2d gradients (gx, gw, gb) with array-module ops only (im2col of g)."""
    xp = get_array_module(x, w, g)
    _, O, kh, kw = w.shape
    H, W = x.shape[2], x.shape[3]
    gx = gw = gb = None
    if need_x or need_w:
        cols = _im2col_xp(xp, g, kh, kw, stride, padding, H, W)  # (N, O, kh, kw, H, W)
    if need_x:
        gx = xp.tensordot(w, cols, axes=([1, 2, 3], [1, 2, 3]))  # (C, N, H, W)
        gx = xp.ascontiguousarray(gx.transpose(1, 0, 2, 3))  # (N, C, H, W)
    if need_w:
        gw = xp.tensordot(x, cols, axes=([0, 2, 3], [0, 4, 5]))  # (C, O, kh, kw)
    if need_b:
        gb = g.sum(axis=(0, 2, 3))
    return gx, gw, gb


# ---------------------------------------------------------------------------
# the columns of the table: groups, then one group at a time on numba or xp


def _group_slices(groups, x, w, transposed):
    """Per group k: (its input channels, its weight rows, its output channels) as slices."""
    Cg, Wg = x.shape[1] // groups, w.shape[0] // groups  # w rows: O/groups (conv), C/groups (transposed)
    Og = w.shape[1] if transposed else Wg
    return [(slice(k * Cg, (k + 1) * Cg), slice(k * Wg, (k + 1) * Wg), slice(k * Og, (k + 1) * Og))
            for k in range(groups)]


def _grouped_forward(one, x, w, b, groups, transposed, *args):
    """``one`` over each of ``groups`` independent channel groups, outputs side by side on C."""
    if groups == 1:
        return one(x, w, b, *args)
    outs = [one(x[:, ci], w[wi], None if b is None else b[oi], *args)
            for ci, wi, oi in _group_slices(groups, x, w, transposed)]
    return get_array_module(x).concatenate(outs, axis=1)


def _grouped_backward(one, x, w, g, groups, transposed, *args):
    """(gx, gw, gb) of a grouped op: ``one`` per group; gx joined on C, gw and gb on axis 0."""
    if groups == 1:
        return one(x, w, g, *args)
    parts = [one(x[:, ci], w[wi], g[:, oi], *args) for ci, wi, oi in _group_slices(groups, x, w, transposed)]
    xp = get_array_module(x)
    return tuple(None if p[0] is None else xp.concatenate(p, axis=a) for p, a in zip(zip(*parts), (1, 0, 0)))


def _contig(*arrays):
    return [None if a is None else np.ascontiguousarray(a) for a in arrays]


def _conv2d_forward_numba_one(x, w, b, stride, padding):
    x, w, b = _contig(x, w, b)
    size = conv2d_output_size(x.shape[2], x.shape[3], w.shape[2], w.shape[3], stride, padding)
    return conv2d_forward_cpu(x, w, b, stride, padding, np.empty((x.shape[0], w.shape[0]) + size, x.dtype))


def _conv2d_backward_numba_one(x, w, g, stride, padding, need_x, need_w, need_b):
    return conv2d_backward_cpu(*_contig(x, w, g), stride, padding, need_x, need_w, need_b)


def _conv_transpose2d_forward_numba_one(x, w, b, stride, padding, output_padding):
    x, w, b = _contig(x, w, b)
    size = conv_transpose2d_output_size(x.shape[2], x.shape[3], w.shape[2], w.shape[3], stride, padding,
                                        output_padding)
    return conv_transpose2d_forward_cpu(x, w, b, stride, padding, np.empty((x.shape[0], w.shape[1]) + size, x.dtype))


def _conv_transpose2d_backward_numba_one(x, w, g, stride, padding, output_padding, need_x, need_w, need_b):
    return conv_transpose2d_backward_cpu(*_contig(x, w, g), stride, padding, need_x, need_w, need_b)


def conv2d_forward_numba(x, w, b, stride, padding, groups):
    """numba column of conv2d_forward (fast path: ``conv2d_forward_cpu``)."""
    return _grouped_forward(_conv2d_forward_numba_one, x, w, b, groups, False, stride, padding)


def conv2d_backward_numba(x, w, g, stride, padding, groups, need_x, need_w, need_b):
    """numba column of conv2d_backward (``conv2d_backward_cpu``)."""
    return _grouped_backward(_conv2d_backward_numba_one, x, w, g, groups, False, stride, padding, need_x, need_w,
                             need_b)


def _forward_one_with(algorithm):
    """One group's forward through ``conv2d_forward_cpu`` with ``algorithm`` forced (a table column's)."""
    def one(x, w, b, stride, padding):
        x, w, b = _contig(x, w, b)
        size = conv2d_output_size(x.shape[2], x.shape[3], w.shape[2], w.shape[3], stride, padding)
        return conv2d_forward_cpu(x, w, b, stride, padding, np.empty((x.shape[0], w.shape[0]) + size, x.dtype),
                                  algorithm=algorithm)
    return one


def _backward_one_with(algorithm):
    """One group's backward through ``conv2d_backward_cpu`` with ``algorithm`` forced."""
    def one(x, w, g, stride, padding, need_x, need_w, need_b):
        return conv2d_backward_cpu(*_contig(x, w, g), stride, padding, need_x, need_w, need_b, algorithm=algorithm)
    return one


_conv2d_forward_winograd_one = _forward_one_with("winograd")
_conv2d_backward_winograd_one = _backward_one_with("winograd")
_conv2d_forward_winograd4_one = _forward_one_with("winograd4")
_conv2d_backward_winograd4_one = _backward_one_with("winograd4")
_conv2d_forward_microgemm_one = _forward_one_with("winograd4_microgemm")
_conv2d_backward_microgemm_one = _backward_one_with("winograd4_microgemm")


def conv2d_forward_winograd4(x, w, b, stride, padding, groups):
    """winograd4 column of conv2d_forward: the numba column with Winograd F(4×4, 3×3) for every 3×3
    stride-1 conv (whatever the shape), so the harness checks it on every drawn shape."""
    return _grouped_forward(_conv2d_forward_winograd4_one, x, w, b, groups, False, stride, padding)


def conv2d_backward_winograd4(x, w, g, stride, padding, groups, need_x, need_w, need_b):
    """winograd4 column of conv2d_backward (grad-input and grad-weight by F(4×4, 3×3) for every 3×3 stride-1
    conv)."""
    return _grouped_backward(_conv2d_backward_winograd4_one, x, w, g, groups, False, stride, padding, need_x,
                             need_w, need_b)


def conv2d_forward_winograd4_microgemm(x, w, b, stride, padding, groups):
    """winograd4_microgemm column of conv2d_forward: F(4×4, 3×3) for every 3×3 stride-1 conv, im2col for the
    others (but 1×1), their products always by the register-blocked ``microgemm.gemm`` (whatever the BLAS and
    the channel count)."""
    return _grouped_forward(_conv2d_forward_microgemm_one, x, w, b, groups, False, stride, padding)


def conv2d_backward_winograd4_microgemm(x, w, g, stride, padding, groups, need_x, need_w, need_b):
    """winograd4_microgemm column of conv2d_backward (grad-input and grad-weight as the winograd4 column's, the
    products by ``microgemm.gemm``)."""
    return _grouped_backward(_conv2d_backward_microgemm_one, x, w, g, groups, False, stride, padding, need_x,
                             need_w, need_b)


def conv2d_forward_winograd(x, w, b, stride, padding, groups):
    """winograd column of conv2d_forward: the numba column with Winograd F(2×2, 3×3) for every
    3×3 stride-1 conv (whatever the shape), so the harness checks it on every drawn shape."""
    return _grouped_forward(_conv2d_forward_winograd_one, x, w, b, groups, False, stride, padding)


def conv2d_backward_winograd(x, w, g, stride, padding, groups, need_x, need_w, need_b):
    """winograd column of conv2d_backward (grad-input by Winograd for every 3×3 stride-1 conv)."""
    return _grouped_backward(_conv2d_backward_winograd_one, x, w, g, groups, False, stride, padding, need_x, need_w,
                             need_b)


def conv_transpose2d_forward_numba(x, w, b, stride, padding, output_padding, groups):
    """numba column of conv_transpose2d_forward (``conv_transpose2d_forward_cpu``)."""
    return _grouped_forward(_conv_transpose2d_forward_numba_one, x, w, b, groups, True, stride, padding,
                            output_padding)


def conv_transpose2d_backward_numba(x, w, g, stride, padding, output_padding, groups, need_x, need_w, need_b):
    """numba column of conv_transpose2d_backward (``conv_transpose2d_backward_cpu``)."""
    return _grouped_backward(_conv_transpose2d_backward_numba_one, x, w, g, groups, True, stride, padding,
                             output_padding, need_x, need_w, need_b)


def conv2d_forward_xp(x, w, b, stride, padding, groups):
    """xp column of conv2d_forward."""
    return _grouped_forward(_conv2d_forward_xp_one, x, w, b, groups, False, stride, padding)


def conv2d_backward_xp(x, w, g, stride, padding, groups, need_x, need_w, need_b):
    """xp column of conv2d_backward."""
    return _grouped_backward(_conv2d_backward_xp_one, x, w, g, groups, False, stride, padding, need_x, need_w, need_b)


def conv_transpose2d_forward_xp(x, w, b, stride, padding, output_padding, groups):
    """xp column of conv_transpose2d_forward."""
    return _grouped_forward(_conv_transpose2d_forward_xp_one, x, w, b, groups, True, stride, padding, output_padding)


def conv_transpose2d_backward_xp(x, w, g, stride, padding, output_padding, groups, need_x, need_w, need_b):
    """xp column of conv_transpose2d_backward."""
    return _grouped_backward(_conv_transpose2d_backward_xp_one, x, w, g, groups, True, stride, padding,
                             output_padding, need_x, need_w, need_b)
