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
(im2col in Numba + one BLAS sgemm per chunk of images), the xp-vectorised path
(numpy or cupy), then the dispatch functions the rest of npdiff calls.
"""

from __future__ import annotations

import threading

import numpy as np

from ..backend import get_array_module
from .config import jit_parallel, jit_serial, prange

# ---------------------------------------------------------------------------
# sizes


def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair (h, w), got {v}")
    return v


def conv2d_output_size(H, W, kh, kw, stride, padding):
    """(Ho, Wo) of a conv2d: ⌊(H + 2ph − kh)/sh⌋ + 1 per axis."""
    (sh, sw), (ph, pw) = stride, padding
    return (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1


def conv_transpose2d_output_size(H, W, kh, kw, stride, padding, output_padding):
    """(Ho, Wo) of a conv_transpose2d: (H − 1)·sh − 2ph + kh + oph per axis."""
    (sh, sw), (ph, pw), (oh, ow) = stride, padding, output_padding
    return (H - 1) * sh - 2 * ph + kh + oh, (W - 1) * sw - 2 * pw + kw + ow


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


def conv2d_backward_reference(x, w, g, stride=(1, 1), padding=(0, 0), groups=1):
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
    return gxpad[:, :, ph : ph + H, pw : pw + W].copy(), gw, gb


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
                                        groups=1):
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
    return gx, gw, g.sum(axis=(0, 2, 3))


# ---------------------------------------------------------------------------
# fast CPU path: im2col (Numba, parallel) + one BLAS sgemm per chunk
#
# The im2col matrix of a chunk of `nb` images and output rows [i0, i0+ni) is
#   cols[k, b, r·Wo + j] = x[n0+b, c, sh·(i0+r)+u−ph, sw·j+v−pw],  k = (c·kh + u)·kw + v
# (zero outside the image), so conv2d over the chunk is ONE matrix product
#   res (O, nb·ni·Wo) = w.reshape(O, K) @ cols.reshape(K, nb·ni·Wo)
# whose rows are already (o, b, pixel): turning it into NCHW is a cheap copy of
# the output (which also adds the bias). Putting several images side by side
# keeps the GEMM wide when Ho·Wo is small (8×8); large images are cut into
# bands of output rows instead. Chunks are sized so that cols stays near
# _CHUNK_BYTES and lives in a reused workspace: no large fresh allocation per
# call (fresh buffers above ~32 MiB page-fault on every touch).

_CHUNK_BYTES = 4 << 20


# Numba note: an index such as ``row[base + j]`` may be negative as far as the
# compiler knows, so it adds Python's wraparound test to every access, which
# also stops vectorisation (~8x slower here). The kernels therefore slice a 1-D
# view first (``dst = cols[k, b, lo:hi]``) and index it with a plain range
# variable, which Numba knows is non-negative.


@jit_serial
def _valid_range(n_out, n_in, s, pad, tap):
    """Output positions j in [lo, hi) whose tap reads inside: 0 <= s·j + tap − pad < n_in."""
    lo = min(n_out, max(0, (pad - tap + s - 1) // s))
    hi = max(lo, min(n_out, (n_in - 1 + pad - tap) // s + 1))
    return lo, hi


@jit_serial
def _zero_edge_columns(block, W, r_lo, r_hi, j_lo, j_hi):
    """block viewed as rows of W: zero columns [0, j_lo) and [j_hi, W) of rows [r_lo, r_hi)."""
    for j in range(j_lo):
        col = block[j::W]
        for r in range(r_lo, r_hi):
            col[r] = 0
    for j in range(j_hi, W):
        col = block[j::W]
        for r in range(r_lo, r_hi):
            col[r] = 0


@jit_parallel
def _im2col(x, n0, nb, i0, ni, kh, kw, sh, sw, ph, pw, Wo, cols):
    """Fill cols (K, nb, ni·Wo) from x (N, C, H, W); prange over the K·nb rows.

    Plain form: cols[k, b, r·Wo + j] = x[n0+b, c, sh·(i0+r)+u−ph, sw·j+v−pw], 0 outside.
    For stride 1 with Wo == W (a "same" conv) the ni rows of one (k, b) are the
    image plane shifted by (u−ph, v−pw): one contiguous copy, then the columns
    that wrapped around to the neighbouring row are zeroed.
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    shifted_plane = sh == 1 and sw == 1 and Wo == W
    for t in prange(C * kh * kw * nb):
        k, b = t // nb, t % nb
        c, u, v = k // (kh * kw), (k // kw) % kh, k % kw
        j_lo, j_hi = _valid_range(Wo, W, sw, pw, v)
        block = cols[k, b]  # (ni·Wo,)
        if shifted_plane:
            r_lo, r_hi = _valid_range(i0 + ni, H, 1, ph, u)
            r_lo, r_hi = max(r_lo - i0, 0), max(r_hi - i0, 0)
            lo, hi = r_lo * W + j_lo, (r_hi - 1) * W + j_hi
            if r_hi <= r_lo or hi <= lo:
                block[:] = 0
                continue
            block[:lo] = 0
            block[hi:] = 0
            dst = block[lo:hi]
            src = x[n0 + b, c].reshape(H * W)[(i0 + r_lo + u - ph) * W + j_lo + v - pw :]
            for m in range(hi - lo):
                dst[m] = src[m]
            _zero_edge_columns(block, W, r_lo, r_hi, j_lo, j_hi)
            continue
        for r in range(ni):
            dst = block[r * Wo : (r + 1) * Wo]
            h = sh * (i0 + r) + u - ph
            if h < 0 or h >= H:
                for j in range(Wo):
                    dst[j] = 0
                continue
            for j in range(j_lo):
                dst[j] = 0
            for j in range(j_hi, Wo):
                dst[j] = 0
            inside = dst[j_lo:j_hi]
            src = x[n0 + b, c, h, sw * j_lo + v - pw :]  # src[sw·m] is column j_lo + m
            if sw == 1:
                for m in range(j_hi - j_lo):
                    inside[m] = src[m]
            else:
                for m in range(j_hi - j_lo):
                    inside[m] = src[sw * m]


@jit_parallel
def _col2im_add(cols, n0, nb, i0, ni, kh, kw, sh, sw, ph, pw, Wo, gx):
    """gx[n0+b, c, sh·(i0+r)+u−ph, sw·j+v−pw] += cols[k, b, r·Wo+j] (the adjoint of _im2col).

    prange over the nb·C planes (n, c): each thread owns whole planes of gx, so
    the overlapping kernel windows never race. The stride-1 "same" case adds
    each (k, b) block to the shifted plane in one contiguous sweep, after zeroing
    (in the scratch cols) the columns that fall outside the image.
    """
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    shifted_plane = sh == 1 and sw == 1 and Wo == W
    for t in prange(nb * C):
        b, c = t // C, t % C
        for u in range(kh):
            for v in range(kw):
                k = (c * kh + u) * kw + v
                j_lo, j_hi = _valid_range(Wo, W, sw, pw, v)
                block = cols[k, b]  # (ni·Wo,)
                if shifted_plane:
                    r_lo, r_hi = _valid_range(i0 + ni, H, 1, ph, u)
                    r_lo, r_hi = max(r_lo - i0, 0), max(r_hi - i0, 0)
                    lo, hi = r_lo * W + j_lo, (r_hi - 1) * W + j_hi
                    if r_hi <= r_lo or hi <= lo:
                        continue
                    _zero_edge_columns(block, W, r_lo, r_hi, j_lo, j_hi)
                    src = block[lo:hi]
                    dst = gx[n0 + b, c].reshape(H * W)[(i0 + r_lo + u - ph) * W + j_lo + v - pw :]
                    for m in range(hi - lo):
                        dst[m] += src[m]
                    continue
                for r in range(ni):
                    h = sh * (i0 + r) + u - ph
                    if h < 0 or h >= H:
                        continue
                    src = block[r * Wo + j_lo : r * Wo + j_hi]
                    dst = gx[n0 + b, c, h, sw * j_lo + v - pw :]  # dst[sw·m] is column j_lo + m
                    if sw == 1:
                        for m in range(j_hi - j_lo):
                            dst[m] += src[m]
                    else:
                        for m in range(j_hi - j_lo):
                            dst[sw * m] += src[m]


@jit_parallel
def _chunk_to_nchw(res, bias, n0, p0, out):
    """out[n0+b, o, p0 + l] = res[o, b, l] + bias[o]   (out: (N, O, Ho·Wo))."""
    O, nb, L = res.shape
    for t in prange(nb * O):
        b, o = t // O, t % O
        src, dst, bo = res[o, b], out[n0 + b, o, p0 : p0 + L], bias[o]
        for l in range(L):
            dst[l] = src[l] + bo


@jit_parallel
def _nchw_to_chunk(g, n0, p0, gt):
    """gt[o, b, l] = g[n0+b, o, p0 + l]   (g: (N, O, Ho·Wo)); the inverse of _chunk_to_nchw."""
    O, nb, L = gt.shape
    for t in prange(nb * O):
        b, o = t // O, t % O
        src, dst = g[n0 + b, o, p0 : p0 + L], gt[o, b]
        for l in range(L):
            dst[l] = src[l]


_ws = threading.local()


def _workspace(role, shape, dtype):
    """A reused scratch array of ``shape`` (grow-only, one per role, dtype and thread)."""
    key = (role, np.dtype(dtype).str)
    size = int(np.prod(shape))
    buf = getattr(_ws, "bufs", None)
    if buf is None:
        buf = _ws.bufs = {}
    if key not in buf or buf[key].size < size:
        buf[key] = np.empty(size, dtype=dtype)
    return buf[key][:size].reshape(shape)


def _chunks(N, Ho, Wo, K, itemsize):
    """(n0, nb, i0, ni) pieces covering N images × Ho output rows, cols ≈ _CHUNK_BYTES each."""
    per_image = K * Ho * Wo * itemsize
    if per_image <= _CHUNK_BYTES:
        nb = max(1, min(N, _CHUNK_BYTES // per_image))
        nb = -(-N // -(-N // nb))  # even out the chunk sizes
        return [(n0, min(nb, N - n0), 0, Ho) for n0 in range(0, N, nb)]
    ni = max(1, min(Ho, _CHUNK_BYTES // (K * Wo * itemsize)))
    return [(n, 1, i0, min(ni, Ho - i0)) for n in range(N) for i0 in range(0, Ho, ni)]


def _is_pointwise(kh, kw, stride, padding):
    return kh == 1 and kw == 1 and stride == (1, 1) and padding == (0, 0)


def _im2col_matmul(x, w2, kh, kw, stride, padding, Ho, Wo, bias, out):
    """out (N, O, Ho, Wo) = w2 (O, K) @ im2col(x), + bias[o]; the shared conv2d forward."""
    (sh, sw), (ph, pw) = stride, padding
    N, O = x.shape[0], w2.shape[0]
    K = w2.shape[1]
    out3 = out.reshape(N, O, Ho * Wo)  # (N, O, P)
    for n0, nb, i0, ni in _chunks(N, Ho, Wo, K, x.itemsize):
        L = ni * Wo
        cols = _workspace("cols", (K, nb, L), x.dtype)
        _im2col(x, n0, nb, i0, ni, kh, kw, sh, sw, ph, pw, Wo, cols)
        res = _workspace("res", (O, nb, L), x.dtype)
        np.matmul(w2, cols.reshape(K, nb * L), out=res.reshape(O, nb * L))
        _chunk_to_nchw(res, bias, n0, i0 * Wo, out3)
    return out


def _gradient_gemms(g, kh, kw, stride, padding, x=None, gw2=None, w2=None, gx=None):
    """The two GEMMs that read an output-shaped gradient g (N, O, Ho, Wo), chunk by chunk.

    gw2 (O, C·kh·kw) = Σ_chunks g_chunk (O, P) @ im2col(x)_chunkᵀ (P, K)   when gw2 is given
    gx (N, C, H, W)  = col2im(w2ᵀ (K, O) @ g_chunk (O, P))                 when gx is given

    The second is conv_transpose2d of g (and so conv2d's grad-input): the GEMM
    gives, for every g pixel, the kh×kw window it scatters, and _col2im_add sums
    the windows. Both share one NCHW -> (O, pixels) copy of each g chunk and one
    cols workspace (the weight GEMM is done with cols before it is overwritten).
    """
    (sh, sw), (ph, pw) = stride, padding
    N, O, Ho, Wo = g.shape
    K = (gw2 if gw2 is not None else w2).shape[1]
    g3 = g.reshape(N, O, Ho * Wo)  # (N, O, P)
    if gx is not None:
        gx[...] = 0
    first = True
    for n0, nb, i0, ni in _chunks(N, Ho, Wo, K, g.itemsize):
        L = ni * Wo
        gt = _workspace("res", (O, nb, L), g.dtype)
        _nchw_to_chunk(g3, n0, i0 * Wo, gt)
        gt2 = gt.reshape(O, nb * L)  # (O, pixels)
        cols = _workspace("cols", (K, nb, L), g.dtype)
        cols2 = cols.reshape(K, nb * L)  # (K, pixels)
        if gw2 is not None:
            _im2col(x, n0, nb, i0, ni, kh, kw, sh, sw, ph, pw, Wo, cols)
            prod = gw2 if first else _workspace("gw", gw2.shape, gw2.dtype)
            np.matmul(gt2, cols2.T, out=prod)
            if not first:
                gw2 += prod
        if gx is not None:
            np.matmul(w2.T, gt2, out=cols2)
            _col2im_add(cols, n0, nb, i0, ni, kh, kw, sh, sw, ph, pw, Wo, gx)
        first = False
    return gw2, gx


def conv2d_forward_cpu(x, w, b, stride, padding, out):
    """Fast conv2d: fills ``out`` (N, O, Ho, Wo).

    Shapes and definition: see conv2d_forward_reference.
    Fast path: per chunk of images (or of output rows), _im2col builds
    cols (C·kh·kw, pixels) in parallel, one sgemm w.reshape(O, K) @ cols gives
    (O, pixels), and _chunk_to_nchw writes it into NCHW adding the bias.
    A 1×1 stride-1 unpadded conv needs no im2col: out[n] = w (O, C) @ x[n] (C, H·W),
    a stacked matmul straight into ``out``.
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
    return _im2col_matmul(x, w2, kh, kw, stride, padding, Ho, Wo, bias, out)


def conv2d_backward_cpu(x, w, g, stride, padding, need_x=True, need_w=True, need_b=True):
    """Fast conv2d backward -> (gx, gw, gb), None where not needed.

    gx is conv_transpose2d(g, w): sgemm w2ᵀ @ g_chunk then _col2im_add,
    parallel over (n, c) planes (no races). gw is the sgemm g_chunk @ colsᵀ,
    summed over chunks (im2col(x) recomputed, not stored by forward).
    gb sums g over (n, i, j). 1×1 stride-1 convs use stacked matmuls directly.
    """
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    w2 = w.reshape(O, C * kh * kw)  # (O, K)
    gx = gw = gb = None
    if _is_pointwise(kh, kw, stride, padding):
        g3 = g.reshape(N, O, H * W)  # (N, O, P)
        x3 = x.reshape(N, C, H * W)  # (N, C, P)
        if need_x:
            gx = np.matmul(w2.T, g3).reshape(N, C, H, W)
        if need_w:
            gw = np.matmul(g3, x3.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)  # Σ_n (O, C)
    else:
        gw2, gx = _gradient_gemms(g, kh, kw, stride, padding,
                                  x=x, gw2=np.empty((O, C * kh * kw), dtype=w.dtype) if need_w else None,
                                  w2=w2, gx=np.empty_like(x) if need_x else None)
        gw = None if gw2 is None else gw2.reshape(w.shape)
    if need_b:
        gb = g.sum(axis=(0, 2, 3))
    return gx, gw, gb


def conv_transpose2d_forward_cpu(x, w, b, stride, padding, out):
    """Fast conv_transpose2d: fills ``out`` (N, O, Ho, Wo).

    It is conv2d's grad-input with x in the role of g: sgemm w.reshape(C, O·kh·kw)ᵀ @ x
    then a parallel col2im (_gradient_gemms), then the bias.
    """
    C, O, kh, kw = w.shape
    _gradient_gemms(x, kh, kw, stride, padding, w2=w.reshape(C, O * kh * kw), gx=out)
    if b is not None:
        out += b[None, :, None, None]
    return out


def conv_transpose2d_backward_cpu(x, w, g, stride, padding, need_x=True, need_w=True, need_b=True):
    """Fast conv_transpose2d backward -> (gx, gw, gb), reusing the conv2d kernels.

    gx = conv2d(g, w) with w (C, O, kh, kw) read as a conv weight (im2col + sgemm);
    gw[c, o, u, v] = Σ x[n,c,i,j] · g[n, o, sh·i+u−ph, sw·j+v−pw] is conv2d's
    weight gradient with x as "grad_out" and g as "input" (_gradient_gemms).
    """
    N, C, H, W = x.shape
    _, O, kh, kw = w.shape
    gx = gw = gb = None
    if need_x:
        gx = conv2d_forward_cpu(g, w, None, stride, padding, np.empty_like(x))
    if need_w:
        gw2, _ = _gradient_gemms(x, kh, kw, stride, padding, x=g, gw2=np.empty((C, O * kh * kw), dtype=w.dtype))
        gw = gw2.reshape(w.shape)
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


def conv2d_forward_xp(x, w, b=None, stride=(1, 1), padding=(0, 0)):
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


def conv2d_backward_xp(x, w, g, stride=(1, 1), padding=(0, 0), need_x=True, need_w=True, need_b=True):
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


def conv_transpose2d_forward_xp(x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0)):
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


def conv_transpose2d_backward_xp(x, w, g, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
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
# dispatch: validation, then numpy -> fast CPU path, cupy -> xp path


def _check(op, x, w, b, stride, padding, groups, transposed, output_padding=0):
    """Validate shapes and arguments; return (stride, padding, output_padding, (Ho, Wo))."""
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    output_padding = _pair(output_padding, "output_padding")
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if w.ndim != 4:
        raise ValueError(f"{op}: weight must be 4-D, got shape {tuple(w.shape)}")
    if min(x.shape) <= 0 or min(w.shape) <= 0:
        raise ValueError(f"{op}: sizes must be positive, got input {tuple(x.shape)}, weight {tuple(w.shape)}")
    if not isinstance(groups, (int, np.integer)) or groups <= 0:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    C = x.shape[1]
    if transposed:  # w: (C, O/groups, kh, kw)
        c_expect, O = w.shape[0], w.shape[1] * groups
        wshape = "(C_in, C_out/groups, kh, kw)"
    else:  # w: (O, C/groups, kh, kw)
        c_expect, O = w.shape[1] * groups, w.shape[0]
        wshape = "(C_out, C_in/groups, kh, kw)"
    if C % groups or (w.shape[0] % groups):
        raise ValueError(f"{op}: groups={groups} must divide the input channels of input shape {tuple(x.shape)} "
                         f"and weight shape {tuple(w.shape)} axis 0")
    if C != c_expect:
        raise ValueError(f"{op}: input shape {tuple(x.shape)} has {C} channels but weight shape {tuple(w.shape)} "
                         f"{wshape} with groups={groups} expects {c_expect}")
    if b is not None and tuple(b.shape) != (O,):
        raise ValueError(f"{op}: bias shape {tuple(b.shape)} != ({O},) for weight shape {tuple(w.shape)}")
    if min(stride) <= 0 or min(padding) < 0 or min(output_padding) < 0:
        raise ValueError(f"{op}: need stride > 0, padding >= 0, output_padding >= 0; got "
                         f"stride={stride}, padding={padding}, output_padding={output_padding}")
    if output_padding[0] >= stride[0] or output_padding[1] >= stride[1]:
        raise ValueError(f"{op}: output_padding {output_padding} must be smaller than stride {stride}")
    if x.dtype.kind != "f":
        raise ValueError(f"{op}: floating input required, got dtype {x.dtype}")
    for a in (w, b):
        if a is not None and a.dtype != x.dtype:
            raise ValueError(f"{op}: input dtype {x.dtype} and parameter dtype {a.dtype} differ")
    kh, kw = w.shape[2], w.shape[3]
    size = (conv_transpose2d_output_size(x.shape[2], x.shape[3], kh, kw, stride, padding, output_padding)
            if transposed else conv2d_output_size(x.shape[2], x.shape[3], kh, kw, stride, padding))
    if min(size) <= 0:
        raise ValueError(f"{op}: output size {size} is not positive for input {tuple(x.shape)}, "
                         f"weight {tuple(w.shape)}, stride {stride}, padding {padding}")
    return stride, padding, output_padding, size


def _contig(*arrays):
    return [None if a is None else np.ascontiguousarray(a) for a in arrays]


def _conv2d_forward_one(x, w, b, stride, padding, size):
    if get_array_module(x, w, b) is not np:
        return conv2d_forward_xp(x, w, b, stride, padding)
    x, w, b = _contig(x, w, b)
    out = np.empty((x.shape[0], w.shape[0]) + size, dtype=x.dtype)
    return conv2d_forward_cpu(x, w, b, stride, padding, out)


def _conv2d_backward_one(x, w, g, stride, padding, need):
    if get_array_module(x, w, g) is not np:
        return conv2d_backward_xp(x, w, g, stride, padding, *need)
    x, w, g = _contig(x, w, g)
    return conv2d_backward_cpu(x, w, g, stride, padding, *need)


def _conv_transpose2d_forward_one(x, w, b, stride, padding, output_padding, size):
    if get_array_module(x, w, b) is not np:
        return conv_transpose2d_forward_xp(x, w, b, stride, padding, output_padding)
    x, w, b = _contig(x, w, b)
    out = np.empty((x.shape[0], w.shape[1]) + size, dtype=x.dtype)
    return conv_transpose2d_forward_cpu(x, w, b, stride, padding, out)


def _conv_transpose2d_backward_one(x, w, g, stride, padding, output_padding, need):
    if get_array_module(x, w, g) is not np:
        return conv_transpose2d_backward_xp(x, w, g, stride, padding, output_padding, *need)
    x, w, g = _contig(x, w, g)
    return conv_transpose2d_backward_cpu(x, w, g, stride, padding, *need)


def _group_slices(groups, *sizes):
    """For each group, one slice per size: [k·size, (k+1)·size)."""
    return [[slice(k * s, (k + 1) * s) for s in sizes] for k in range(groups)]


def _join(xp, parts, axis):
    return None if parts[0] is None else xp.concatenate(parts, axis=axis)


def conv2d_forward(x, w, b=None, stride=1, padding=0, groups=1):
    """conv2d (definition in the module docstring) -> (N, O, Ho, Wo).

    numpy arrays take conv2d_forward_cpu, cupy arrays conv2d_forward_xp. With
    groups > 1 each group is an independent conv over its channel slice.
    """
    stride, padding, _, size = _check("conv2d", x, w, b, stride, padding, groups, transposed=False)
    if groups == 1:
        return _conv2d_forward_one(x, w, b, stride, padding, size)
    Cg, Og = x.shape[1] // groups, w.shape[0] // groups
    outs = [_conv2d_forward_one(x[:, ci], w[oi], None if b is None else b[oi], stride, padding, size)
            for ci, oi in _group_slices(groups, Cg, Og)]
    return get_array_module(x).concatenate(outs, axis=1)


def conv2d_backward(x, w, g, stride=1, padding=0, groups=1, need_x=True, need_w=True, need_b=True):
    """(gx, gw, gb) of conv2d for upstream g (N, O, Ho, Wo); None where not needed."""
    stride, padding, _, size = _check("conv2d", x, w, None, stride, padding, groups, transposed=False)
    if tuple(g.shape) != (x.shape[0], w.shape[0]) + size:
        raise ValueError(f"conv2d backward: grad shape {tuple(g.shape)} != output shape "
                         f"{(x.shape[0], w.shape[0]) + size}")
    need = (need_x, need_w, need_b)
    if groups == 1:
        return _conv2d_backward_one(x, w, g, stride, padding, need)
    Cg, Og = x.shape[1] // groups, w.shape[0] // groups
    parts = [_conv2d_backward_one(x[:, ci], w[oi], g[:, oi], stride, padding, need)
             for ci, oi in _group_slices(groups, Cg, Og)]
    xp = get_array_module(x)
    gx, gw, gb = zip(*parts)
    return _join(xp, gx, 1), _join(xp, gw, 0), _join(xp, gb, 0)


def conv_transpose2d_forward(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1):
    """conv_transpose2d -> (N, O, Ho, Wo); numpy -> the fast CPU path, cupy -> the xp path."""
    stride, padding, output_padding, size = _check(
        "conv_transpose2d", x, w, b, stride, padding, groups, transposed=True, output_padding=output_padding)
    if groups == 1:
        return _conv_transpose2d_forward_one(x, w, b, stride, padding, output_padding, size)
    Cg, Og = x.shape[1] // groups, w.shape[1]
    outs = [_conv_transpose2d_forward_one(x[:, ci], w[ci], None if b is None else b[oi], stride, padding,
                                          output_padding, size)
            for ci, oi in _group_slices(groups, Cg, Og)]
    return get_array_module(x).concatenate(outs, axis=1)


def conv_transpose2d_backward(x, w, g, stride=1, padding=0, output_padding=0, groups=1, need_x=True, need_w=True,
                              need_b=True):
    """(gx, gw, gb) of conv_transpose2d for upstream g (N, O, Ho, Wo); None where not needed."""
    stride, padding, output_padding, size = _check(
        "conv_transpose2d", x, w, None, stride, padding, groups, transposed=True, output_padding=output_padding)
    O = w.shape[1] * groups
    if tuple(g.shape) != (x.shape[0], O) + size:
        raise ValueError(f"conv_transpose2d backward: grad shape {tuple(g.shape)} != output shape "
                         f"{(x.shape[0], O) + size}")
    need = (need_x, need_w, need_b)
    if groups == 1:
        return _conv_transpose2d_backward_one(x, w, g, stride, padding, output_padding, need)
    Cg, Og = x.shape[1] // groups, w.shape[1]
    parts = [_conv_transpose2d_backward_one(x[:, ci], w[ci], g[:, oi], stride, padding, output_padding, need)
             for ci, oi in _group_slices(groups, Cg, Og)]
    xp = get_array_module(x)
    gx, gw, gb = zip(*parts)
    return _join(xp, gx, 1), _join(xp, gw, 0), _join(xp, gb, 0)
