"""Pooling and upsampling kernels: max pool, average pool, nearest and bilinear
interpolation — forward and backward, NCHW.

Notation: x (N, C, H, W); window k = (kh, kw), stride s = (sh, sw), zero/−∞
padding p = (ph, pw); output size (floor mode, as torch's default)

    Ho = ⌊(H + 2ph − kh)/sh⌋ + 1,   Wo = ⌊(W + 2pw − kw)/sw⌋ + 1.

Window of output (i, j): rows h ∈ [i·sh − ph, i·sh − ph + kh), columns likewise;
positions outside [0, H) × [0, W) are padding.

Every op here is independent per (n, c) plane, so the fast Numba kernels use
the N·C planes split over threads (``config.parallel_for``); a backward that scatters (overlapping windows,
upsampling's many-to-one reads) accumulates into its own plane only, so threads
never write the same element.

File layout: reference (loops) → numba → xp-vectorised (numpy/cupy). The columns are
registered in ``table.py``; the one dispatch validates (``checks.py``) and picks one.

GPU twin: ``npdiff/kernels/cuda/pooling.py`` (the table's ``cuda`` column: one thread per
output; atomics where a backward scatters).
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .checks import pool_output_size
from .config import jit_serial, parallel_for

# ---------------------------------------------------------------------------
# reference versions: loops straight from the definition


def max_pool2d_forward_reference(x, kernel_size, stride, padding):
    """Max pooling by loops.

    Shapes: x (N, C, H, W) → out (N, C, Ho, Wo), argmax (N, C, Ho, Wo) int64.
    Definition: out[n, c, i, j] = max over the window of x[n, c, h, w] (padding is −∞,
    never chosen); argmax = h·W + w of the first maximum in row-major window order
    (torch's tie rule; a NaN counts as the maximum).
    """
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    Ho, Wo = pool_output_size(H, W, kernel_size, stride, padding)
    out = np.empty((N, C, Ho, Wo), x.dtype)
    arg = np.empty((N, C, Ho, Wo), np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    best, best_at = -np.inf, -1
                    for a in range(kh):
                        for b in range(kw):
                            h, w = i * sh - ph + a, j * sw - pw + b
                            if 0 <= h < H and 0 <= w < W:
                                v = x[n, c, h, w]
                                if best_at < 0 or v > best or (np.isnan(v) and not np.isnan(best)):
                                    best, best_at = v, h * W + w
                    out[n, c, i, j], arg[n, c, i, j] = best, best_at
    return out, arg


def max_pool2d_backward_reference(g, argmax, x_shape):
    """dx[n, c, h, w] = Σ of g[n, c, i, j] over the outputs whose argmax is (h, w)."""
    N, C, H, W = x_shape
    dx = np.zeros((N, C, H * W), g.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(g.shape[2]):
                for j in range(g.shape[3]):
                    dx[n, c, argmax[n, c, i, j]] += g[n, c, i, j]
    return dx.reshape(x_shape)


def _avg_divisor(i, j, H, W, kernel_size, stride, padding, count_include_pad):
    """Divisor of window (i, j): its area clipped to the padded input (count_include_pad),
    else the number of real (non-padding) elements in it."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    h0, w0 = i * sh - ph, j * sw - pw
    h1, w1 = min(h0 + kh, H + ph), min(w0 + kw, W + pw)
    if count_include_pad:
        return (h1 - h0) * (w1 - w0)
    return (min(h1, H) - max(h0, 0)) * (min(w1, W) - max(w0, 0))


def avg_pool2d_forward_reference(x, kernel_size, stride, padding, count_include_pad=True):
    """Average pooling by loops.

    Shapes: x (N, C, H, W) → out (N, C, Ho, Wo).
    Definition: out[n, c, i, j] = Σ_window x[n, c, h, w] / divisor(i, j) (padding counts
    as 0; divisor: see ``_avg_divisor``).
    """
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    Ho, Wo = pool_output_size(H, W, kernel_size, stride, padding)
    out = np.empty((N, C, Ho, Wo), x.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    acc = 0.0
                    for a in range(kh):
                        for b in range(kw):
                            h, w = i * sh - ph + a, j * sw - pw + b
                            if 0 <= h < H and 0 <= w < W:
                                acc += float(x[n, c, h, w])
                    out[n, c, i, j] = acc / _avg_divisor(i, j, H, W, kernel_size, stride, padding, count_include_pad)
    return out


def avg_pool2d_backward_reference(g, x_shape, kernel_size, stride, padding, count_include_pad=True):
    """dx[n, c, h, w] = Σ over windows (i, j) containing (h, w) of g[n, c, i, j] / divisor(i, j)."""
    N, C, H, W = x_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    dx = np.zeros(x_shape, np.float64)
    for n in range(N):
        for c in range(C):
            for i in range(g.shape[2]):
                for j in range(g.shape[3]):
                    share = g[n, c, i, j] / _avg_divisor(i, j, H, W, kernel_size, stride, padding, count_include_pad)
                    for a in range(kh):
                        for b in range(kw):
                            h, w = i * sh - ph + a, j * sw - pw + b
                            if 0 <= h < H and 0 <= w < W:
                                dx[n, c, h, w] += share
    return dx.astype(g.dtype)


# -- interpolation: the index conventions of torch.nn.functional.interpolate


def nearest_source_index(in_size, out_size, scale_factor=None):
    """Source index of each output index for mode="nearest".

    src[d] = min(⌊d · r⌋, in − 1) with r = 1/scale_factor when a scale factor was given,
    else in/out — computed in float32, as torch does (so the rounding matches exactly).
    """
    if scale_factor is not None and scale_factor > 0:
        r = np.float32(1.0 / scale_factor)
    else:
        r = np.float32(in_size) / np.float32(out_size)
    d = np.arange(out_size).astype(np.float32)
    return np.minimum(np.floor(d * r).astype(np.int64), in_size - 1)


def linear_source_weights(in_size, out_size, align_corners, scale_factor=None, dtype=np.float32):
    """Two source indices and weights per output index for mode="bilinear" (one axis).

    align_corners=True:  src = d · (in − 1)/(out − 1)  (0 when out = 1).
    align_corners=False: src = max(r·(d + ½) − ½, 0), r = 1/scale_factor if given, else in/out
                         (pixel centres line up; half-pixel convention).
    i0 = min(⌊src⌋, in − 1), i1 = i0 + 1 (i0 at the last row), λ1 = src − i0, λ0 = 1 − λ1.
    Arithmetic in ``dtype`` (float32 for float32 data), as torch does.
    Returns i0, i1 (int64) and l0, l1 (dtype), each of length out_size.
    """
    t = np.dtype(dtype).type
    d = np.arange(out_size).astype(dtype)
    if align_corners:
        r = t(in_size - 1) / t(out_size - 1) if out_size > 1 else t(0)
        src = r * d
    else:
        r = t(1.0 / scale_factor) if scale_factor is not None and scale_factor > 0 else t(in_size) / t(out_size)
        src = np.maximum(r * (d + t(0.5)) - t(0.5), t(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    l1 = np.clip(src - i0.astype(dtype), t(0), t(1)).astype(dtype)
    l0 = (t(1) - l1).astype(dtype)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, l0, l1


def interpolate_forward_reference(x, size, mode="nearest", align_corners=False, scale_factor=(None, None)):
    """Upsampling/resizing by loops.

    Shapes: x (N, C, H, W), size = (Ho, Wo) → out (N, C, Ho, Wo).
    nearest:  out[n, c, i, j] = x[n, c, src_h(i), src_w(j)]            (``nearest_source_index``)
    bilinear: out[n, c, i, j] = λ0h(λ0w x[h0, w0] + λ1w x[h0, w1]) + λ1h(λ0w x[h1, w0] + λ1w x[h1, w1])
              with (h0, h1, λ0h, λ1h), (w0, w1, λ0w, λ1w) from ``linear_source_weights``.
    """
    N, C, H, W = x.shape
    Ho, Wo = size
    out = np.empty((N, C, Ho, Wo), x.dtype)
    if mode == "nearest":
        sh, sw = nearest_source_index(H, Ho, scale_factor[0]), nearest_source_index(W, Wo, scale_factor[1])
        for i in range(Ho):
            for j in range(Wo):
                out[:, :, i, j] = x[:, :, sh[i], sw[j]]
        return out
    h0, h1, lh0, lh1 = linear_source_weights(H, Ho, align_corners, scale_factor[0], x.dtype)
    w0, w1, lw0, lw1 = linear_source_weights(W, Wo, align_corners, scale_factor[1], x.dtype)
    for i in range(Ho):
        for j in range(Wo):
            top = lw0[j] * x[:, :, h0[i], w0[j]] + lw1[j] * x[:, :, h0[i], w1[j]]
            bottom = lw0[j] * x[:, :, h1[i], w0[j]] + lw1[j] * x[:, :, h1[i], w1[j]]
            out[:, :, i, j] = lh0[i] * top + lh1[i] * bottom
    return out


def interpolate_backward_reference(g, x_shape, mode="nearest", align_corners=False, scale_factor=(None, None)):
    """The adjoint of the forward: each output's gradient goes back to the input
    pixels it read, times the weight it read them with (nearest: weight 1)."""
    N, C, H, W = x_shape
    Ho, Wo = g.shape[2:]
    dx = np.zeros(x_shape, np.float64)
    if mode == "nearest":
        sh, sw = nearest_source_index(H, Ho, scale_factor[0]), nearest_source_index(W, Wo, scale_factor[1])
        for i in range(Ho):
            for j in range(Wo):
                dx[:, :, sh[i], sw[j]] += g[:, :, i, j]
        return dx.astype(g.dtype)
    h0, h1, lh0, lh1 = linear_source_weights(H, Ho, align_corners, scale_factor[0], g.dtype)
    w0, w1, lw0, lw1 = linear_source_weights(W, Wo, align_corners, scale_factor[1], g.dtype)
    for i in range(Ho):
        for j in range(Wo):
            gij = g[:, :, i, j]
            dx[:, :, h0[i], w0[j]] += lh0[i] * lw0[j] * gij
            dx[:, :, h0[i], w1[j]] += lh0[i] * lw1[j] * gij
            dx[:, :, h1[i], w0[j]] += lh1[i] * lw0[j] * gij
            dx[:, :, h1[i], w1[j]] += lh1[i] * lw1[j] * gij
    return dx.astype(g.dtype)


# ---------------------------------------------------------------------------
# fast CPU versions (Numba): the N·C planes split over threads (config.parallel_for)


@jit_serial
def _max_pool2d_forward_fast(lo, hi, x3, kh, kw, sh, sw, ph, pw, out, arg):
    H, W = x3.shape[1], x3.shape[2]
    Ho, Wo = out.shape[1], out.shape[2]
    for r in range(lo, hi):  # parallel_for's share of the P = N·C planes
        for i in range(Ho):
            h_lo = max(i * sh - ph, 0)
            h_hi = min(i * sh - ph + kh, H)
            for j in range(Wo):
                w_lo = max(j * sw - pw, 0)
                w_hi = min(j * sw - pw + kw, W)
                best = x3[r, h_lo, w_lo]
                at = h_lo * W + w_lo
                for h in range(h_lo, h_hi):
                    for w in range(w_lo, w_hi):
                        v = x3[r, h, w]
                        # plain form: if v > best (or v is the first NaN): best, at = v, h·W + w
                        # written as selects: random data mispredicts an if half the time
                        take = (v > best) | ((v != v) & (best == best))
                        best = v if take else best
                        at = h * W + w if take else at
                out[r, i, j] = best
                arg[r, i, j] = at


@jit_serial
def _max_pool2d_backward_fast(lo, hi, g3, arg, dx):
    Ho, Wo = g3.shape[1], g3.shape[2]
    for r in range(lo, hi):  # parallel_for's share of the P = N·C planes
        plane = dx[r]
        plane[:] = 0
        for i in range(Ho):
            for j in range(Wo):
                plane[arg[r, i, j]] += g3[r, i, j]


@jit_serial
def _avg_pool2d_forward_fast(lo, hi, x3, kh, kw, sh, sw, ph, pw, include_pad, out):
    H, W = x3.shape[1], x3.shape[2]
    Ho, Wo = out.shape[1], out.shape[2]
    for r in range(lo, hi):  # parallel_for's share of the P = N·C planes
        for i in range(Ho):
            h0 = i * sh - ph
            h_lo, h_hi = max(h0, 0), min(h0 + kh, H)
            for j in range(Wo):
                w0 = j * sw - pw
                w_lo, w_hi = max(w0, 0), min(w0 + kw, W)
                if include_pad:
                    div = (min(h0 + kh, H + ph) - h0) * (min(w0 + kw, W + pw) - w0)
                else:
                    div = (h_hi - h_lo) * (w_hi - w_lo)
                acc = 0.0
                for h in range(h_lo, h_hi):
                    for w in range(w_lo, w_hi):
                        acc += x3[r, h, w]
                out[r, i, j] = acc / div


@jit_serial
def _avg_pool2d_backward_fast(lo, hi, g3, kh, kw, sh, sw, ph, pw, include_pad, dx):
    H, W = dx.shape[1], dx.shape[2]
    Ho, Wo = g3.shape[1], g3.shape[2]
    for r in range(lo, hi):  # parallel_for's share of the P = N·C planes
        plane = dx[r]
        plane[:] = 0
        for i in range(Ho):
            h0 = i * sh - ph
            h_lo, h_hi = max(h0, 0), min(h0 + kh, H)
            for j in range(Wo):
                w0 = j * sw - pw
                w_lo, w_hi = max(w0, 0), min(w0 + kw, W)
                if include_pad:
                    div = (min(h0 + kh, H + ph) - h0) * (min(w0 + kw, W + pw) - w0)
                else:
                    div = (h_hi - h_lo) * (w_hi - w_lo)
                share = g3[r, i, j] / div
                for h in range(h_lo, h_hi):
                    for w in range(w_lo, w_hi):
                        plane[h, w] += share


@jit_serial
def _nearest_forward_fast(lo, hi, x3, src_h, src_w, out):
    Ho, Wo = out.shape[1], out.shape[2]
    for r in range(lo, hi):  # parallel_for's share of the P = N·C planes
        for i in range(Ho):
            row = x3[r, src_h[i]]
            for j in range(Wo):
                out[r, i, j] = row[src_w[j]]


@jit_serial
def _nearest_backward_fast(lo, hi, g3, src_h, src_w, dx):
    Ho, Wo = g3.shape[1], g3.shape[2]
    for r in range(lo, hi):  # parallel_for's share of the P = N·C planes
        plane = dx[r]
        plane[:] = 0
        for i in range(Ho):
            row = plane[src_h[i]]
            for j in range(Wo):
                row[src_w[j]] += g3[r, i, j]


@jit_serial
def _bilinear_forward_fast(lo, hi, x3, h0, h1, lh0, lh1, w0, w1, lw0, lw1, out):
    Ho, Wo = out.shape[1], out.shape[2]
    for r in range(lo, hi):  # parallel_for's share of the P = N·C planes
        for i in range(Ho):
            top = x3[r, h0[i]]
            bot = x3[r, h1[i]]
            a, b = lh0[i], lh1[i]
            for j in range(Wo):
                out[r, i, j] = a * (lw0[j] * top[w0[j]] + lw1[j] * top[w1[j]]) + b * (
                    lw0[j] * bot[w0[j]] + lw1[j] * bot[w1[j]]
                )


@jit_serial
def _bilinear_backward_fast(lo, hi, g3, h0, h1, lh0, lh1, w0, w1, lw0, lw1, dx):
    Ho, Wo = g3.shape[1], g3.shape[2]
    for r in range(lo, hi):  # parallel_for's share of the P = N·C planes
        plane = dx[r]
        plane[:] = 0
        for i in range(Ho):
            top = plane[h0[i]]
            bot = plane[h1[i]]
            a, b = lh0[i], lh1[i]
            for j in range(Wo):
                gv = g3[r, i, j]
                top[w0[j]] += a * lw0[j] * gv
                top[w1[j]] += a * lw1[j] * gv
                bot[w0[j]] += b * lw0[j] * gv
                bot[w1[j]] += b * lw1[j] * gv


def _planes(x):
    """(N, C, H, W) → contiguous (N·C, H, W) view/copy."""
    return np.ascontiguousarray(x).reshape(-1, x.shape[-2], x.shape[-1])  # (P, H, W)


def max_pool2d_forward_numba(x, kernel_size, stride, padding):
    """Max pooling on the CPU; contract of ``max_pool2d_forward_reference``.

    Fast path: N·C planes split over threads; each window's bounds are clipped to the
    input once, so the inner loop has no padding test, and the running maximum is
    updated with selects rather than a branch (3x faster on random data).
    """
    N, C, H, W = x.shape
    Ho, Wo = pool_output_size(H, W, kernel_size, stride, padding)
    out = np.empty((N * C, Ho, Wo), x.dtype)
    arg = np.empty((N * C, Ho, Wo), np.int64)
    parallel_for(_max_pool2d_forward_fast, N * C, _planes(x), *kernel_size, *stride, *padding, out, arg)
    return out.reshape(N, C, Ho, Wo), arg.reshape(N, C, Ho, Wo)


def max_pool2d_backward_numba(g, argmax, x_shape):
    """Scatter of g to the argmax positions; planes split over threads (each thread owns its plane)."""
    N, C, H, W = x_shape
    dx = np.empty((N * C, H * W), g.dtype)
    parallel_for(_max_pool2d_backward_fast, N * C, _planes(g),
                 np.ascontiguousarray(argmax).reshape(N * C, *g.shape[2:]), dx)
    return dx.reshape(x_shape)


def avg_pool2d_forward_numba(x, kernel_size, stride, padding, count_include_pad=True):
    """Average pooling on the CPU (planes split over threads, clipped windows, float64 sums)."""
    N, C, H, W = x.shape
    Ho, Wo = pool_output_size(H, W, kernel_size, stride, padding)
    out = np.empty((N * C, Ho, Wo), x.dtype)
    parallel_for(_avg_pool2d_forward_fast, N * C, _planes(x), *kernel_size, *stride, *padding, bool(count_include_pad),
                 out)
    return out.reshape(N, C, Ho, Wo)


def avg_pool2d_backward_numba(g, x_shape, kernel_size, stride, padding, count_include_pad=True):
    """Each window spreads g/divisor over its real elements; planes split over threads."""
    N, C, H, W = x_shape
    dx = np.empty((N * C, H, W), g.dtype)
    parallel_for(_avg_pool2d_backward_fast, N * C, _planes(g), *kernel_size, *stride, *padding, bool(count_include_pad),
                 dx)
    return dx.reshape(x_shape)


def interpolate_forward_numba(x, size, mode="nearest", align_corners=False, scale_factor=(None, None)):
    """Interpolation on the CPU: source indices/weights per axis computed once
    (small arrays), then a gather per plane, planes split over threads."""
    N, C, H, W = x.shape
    Ho, Wo = size
    out = np.empty((N * C, Ho, Wo), x.dtype)
    if mode == "nearest":
        sh, sw = nearest_source_index(H, Ho, scale_factor[0]), nearest_source_index(W, Wo, scale_factor[1])
        parallel_for(_nearest_forward_fast, N * C, _planes(x), sh, sw, out)
    else:
        hw = linear_source_weights(H, Ho, align_corners, scale_factor[0], x.dtype)
        ww = linear_source_weights(W, Wo, align_corners, scale_factor[1], x.dtype)
        parallel_for(_bilinear_forward_fast, N * C, _planes(x), *hw, *ww, out)
    return out.reshape(N, C, Ho, Wo)


def interpolate_backward_numba(g, x_shape, mode="nearest", align_corners=False, scale_factor=(None, None)):
    """Adjoint of the forward: scatter-add per plane (planes split over threads)."""
    N, C, H, W = x_shape
    Ho, Wo = g.shape[2:]
    dx = np.empty((N * C, H, W), g.dtype)
    if mode == "nearest":
        sh, sw = nearest_source_index(H, Ho, scale_factor[0]), nearest_source_index(W, Wo, scale_factor[1])
        parallel_for(_nearest_backward_fast, N * C, _planes(g), sh, sw, dx)
    else:
        hw = linear_source_weights(H, Ho, align_corners, scale_factor[0], g.dtype)
        ww = linear_source_weights(W, Wo, align_corners, scale_factor[1], g.dtype)
        parallel_for(_bilinear_backward_fast, N * C, _planes(g), *hw, *ww, dx)
    return dx.reshape(x_shape)


# ---------------------------------------------------------------------------
# xp-vectorised versions (numpy or cupy): one strided slice per window offset


def _window_slices(kernel_size, stride, Ho, Wo):
    """For each window offset (a, b): the slice of the padded input it reads, (Ho, Wo) big."""
    (kh, kw), (sh, sw) = kernel_size, stride
    for a in range(kh):
        for b in range(kw):
            yield a, b, (Ellipsis, slice(a, a + sh * (Ho - 1) + 1, sh), slice(b, b + sw * (Wo - 1) + 1, sw))


def max_pool2d_forward_xp(x, kernel_size, stride, padding):
    """Vectorised max pooling: stack the kh·kw strided views of the −∞-padded input
    and take the first argmax over them."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    (ph, pw), kw = padding, kernel_size[1]
    Ho, Wo = pool_output_size(H, W, kernel_size, stride, padding)
    xpad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-xp.inf)
    views = xp.stack([xpad[sl] for _, _, sl in _window_slices(kernel_size, stride, Ho, Wo)])  # (kh·kw, N, C, Ho, Wo)
    k = xp.argmax(views, axis=0)  # first maximum (NaN counts as the maximum)
    out = xp.take_along_axis(views, k[None], axis=0)[0]
    a, b = k // kw, k % kw
    h = xp.arange(Ho).reshape(Ho, 1) * stride[0] - ph + a
    w = xp.arange(Wo).reshape(1, Wo) * stride[1] - pw + b
    return out, (h * W + w).astype(xp.int64)


def max_pool2d_backward_xp(g, argmax, x_shape):
    """Vectorised scatter: dx = bincount-style add of g at argmax, per plane."""
    xp = get_array_module(g)
    N, C, H, W = x_shape
    P = N * C
    flat = (argmax.reshape(P, -1) + (xp.arange(P) * (H * W))[:, None]).ravel()
    dx = xp.bincount(flat, weights=g.reshape(-1).astype(xp.float64), minlength=P * H * W)
    return dx.astype(g.dtype).reshape(x_shape)


def _avg_divisors_xp(xp, H, W, kernel_size, stride, padding, Ho, Wo, count_include_pad):
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    h0 = xp.arange(Ho) * sh - ph
    w0 = xp.arange(Wo) * sw - pw
    if count_include_pad:
        dh = xp.minimum(h0 + kh, H + ph) - h0
        dw = xp.minimum(w0 + kw, W + pw) - w0
    else:
        dh = xp.minimum(h0 + kh, H) - xp.maximum(h0, 0)
        dw = xp.minimum(w0 + kw, W) - xp.maximum(w0, 0)
    return dh.reshape(Ho, 1) * dw.reshape(1, Wo)  # (Ho, Wo)


def avg_pool2d_forward_xp(x, kernel_size, stride, padding, count_include_pad=True):
    """Vectorised average pooling: sum of the kh·kw strided views of the zero-padded input."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    (ph, pw) = padding
    Ho, Wo = pool_output_size(H, W, kernel_size, stride, padding)
    xpad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    acc = xp.zeros((N, C, Ho, Wo), xp.float64)
    for _, _, sl in _window_slices(kernel_size, stride, Ho, Wo):
        acc += xpad[sl]
    div = _avg_divisors_xp(xp, H, W, kernel_size, stride, padding, Ho, Wo, count_include_pad)
    return (acc / div).astype(x.dtype)


def avg_pool2d_backward_xp(g, x_shape, kernel_size, stride, padding, count_include_pad=True):
    """Vectorised: add g/divisor into each of the kh·kw strided views of a padded zero array."""
    xp = get_array_module(g)
    N, C, H, W = x_shape
    (ph, pw) = padding
    Ho, Wo = g.shape[2:]
    share = g / _avg_divisors_xp(xp, H, W, kernel_size, stride, padding, Ho, Wo, count_include_pad)
    dpad = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), xp.float64)
    for _, _, sl in _window_slices(kernel_size, stride, Ho, Wo):
        dpad[sl] += share
    return dpad[:, :, ph : ph + H, pw : pw + W].astype(g.dtype)


def _interp_matrix(xp, in_size, out_size, mode, align_corners, scale_factor, dtype):
    """(out, in) matrix M with out_axis = M @ in_axis: one 1 per row (nearest) or the
    two bilinear weights per row."""
    M = np.zeros((out_size, in_size), dtype)
    rows = np.arange(out_size)
    if mode == "nearest":
        M[rows, nearest_source_index(in_size, out_size, scale_factor)] = 1
    else:
        i0, i1, l0, l1 = linear_source_weights(in_size, out_size, align_corners, scale_factor, dtype)
        np.add.at(M, (rows, i0), l0)
        np.add.at(M, (rows, i1), l1)
    return xp.asarray(M)


def interpolate_forward_xp(x, size, mode="nearest", align_corners=False, scale_factor=(None, None)):
    """Vectorised interpolation: separable, out = Mh · x · Mwᵀ per plane (two GEMMs)."""
    xp = get_array_module(x)
    Mh = _interp_matrix(xp, x.shape[2], size[0], mode, align_corners, scale_factor[0], x.dtype)  # (Ho, H)
    Mw = _interp_matrix(xp, x.shape[3], size[1], mode, align_corners, scale_factor[1], x.dtype)  # (Wo, W)
    return xp.matmul(xp.matmul(Mh, x), Mw.T)  # (N, C, Ho, W) → (N, C, Ho, Wo)


def interpolate_backward_xp(g, x_shape, mode="nearest", align_corners=False, scale_factor=(None, None)):
    """Adjoint of the matrix form: dx = Mhᵀ · g · Mw."""
    xp = get_array_module(g)
    Mh = _interp_matrix(xp, x_shape[2], g.shape[2], mode, align_corners, scale_factor[0], g.dtype)
    Mw = _interp_matrix(xp, x_shape[3], g.shape[3], mode, align_corners, scale_factor[1], g.dtype)
    return xp.matmul(xp.matmul(Mh.T, g), Mw)  # (N, C, H, Wo) → (N, C, H, W)
