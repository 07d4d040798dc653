"""Max / average pooling and nearest / bilinear interpolation on the GPU (Numba CUDA): the
``cuda`` column of the pooling rows.

The CPU twin, with the definitions, window conventions and reference loops, is
``npdiff/kernels/pooling.py``: x (N, C, H, W) seen as P = N·C planes, window of output
(i, j) = rows [i·sh − ph, i·sh − ph + kh) × columns likewise, argmax = h·W + w of the first
maximum; interpolation reads the source indices and weights of ``nearest_source_index`` /
``linear_source_weights`` (computed once per call on the host: O(Ho + Wo) numbers).

The GPU version: one thread per output element (plane, i, j) everywhere. Forward kernels
gather. Backward:
  * average pooling gathers too — input pixel (h, w) collects g/divisor from the outputs
    whose windows hold it, i ∈ [⌈(h + ph − kh + 1)/sh⌉, ⌊(h + ph)/sh⌋] — deterministic;
  * max pooling and interpolation scatter each output's gradient to the pixel(s) it read with
    ``cuda.atomic.add`` (a pixel may be read by several outputs; the table row gives the
    backward only the argmax or the source indices, not a way to invert them cheaply).
    The order of the atomic additions is not fixed, so the last bit may vary run to run.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .. import pooling as _cpu
from ..checks import pool_output_size
from .common import kernel, launch, xp_of


def _planes(x):
    return x.reshape(-1, x.shape[-2], x.shape[-1])  # (P, H, W)


@kernel("A3 i i i i i i A3 I3")
def max_pool_forward(x3, kh, kw, sh, sw, ph, pw, out, arg):
    """out, arg (P, Ho, Wo): max of each window and h·W + w of its first maximum (NaN wins)."""
    e = cuda.grid(1)
    P, H, W = x3.shape
    Ho, Wo = out.shape[1], out.shape[2]
    if e < P * Ho * Wo:
        r, i, j = e // (Ho * Wo), (e // Wo) % Ho, e % Wo
        h_lo, h_hi = max(i * sh - ph, 0), min(i * sh - ph + kh, H)
        w_lo, w_hi = max(j * sw - pw, 0), min(j * sw - pw + kw, W)
        best = x3[r, h_lo, w_lo]
        at = h_lo * W + w_lo
        for h in range(h_lo, h_hi):
            for w in range(w_lo, w_hi):
                v = x3[r, h, w]
                if v > best or (v != v and best == best):
                    best = v
                    at = h * W + w
        out[r, i, j] = best
        arg[r, i, j] = at


@kernel("A3 I3 A2")
def max_pool_backward(g3, arg, dx2):
    """dx2 (P, H·W) += g at each output's argmax (atomic: windows overlap)."""
    e = cuda.grid(1)
    P, Ho, Wo = g3.shape
    if e < P * Ho * Wo:
        r, i, j = e // (Ho * Wo), (e // Wo) % Ho, e % Wo
        cuda.atomic.add(dx2, (r, arg[r, i, j]), g3[r, i, j])


@cuda.jit(device=True)
def _divisor(i, j, H, W, kh, kw, sh, sw, ph, pw, include_pad):
    """How many elements window (i, j) averages: all but the part past the padding, or only real ones."""
    h0, w0 = i * sh - ph, j * sw - pw
    if include_pad:
        return (min(h0 + kh, H + ph) - h0) * (min(w0 + kw, W + pw) - w0)
    return (min(h0 + kh, H) - max(h0, 0)) * (min(w0 + kw, W) - max(w0, 0))


@kernel("A3 i i i i i i b A3")
def avg_pool_forward(x3, kh, kw, sh, sw, ph, pw, include_pad, out):
    """out (P, Ho, Wo): the window's sum (float64) over its divisor."""
    e = cuda.grid(1)
    P, H, W = x3.shape
    Ho, Wo = out.shape[1], out.shape[2]
    if e < P * Ho * Wo:
        r, i, j = e // (Ho * Wo), (e // Wo) % Ho, e % Wo
        acc = 0.0
        for h in range(max(i * sh - ph, 0), min(i * sh - ph + kh, H)):
            for w in range(max(j * sw - pw, 0), min(j * sw - pw + kw, W)):
                acc += x3[r, h, w]
        out[r, i, j] = acc / _divisor(i, j, H, W, kh, kw, sh, sw, ph, pw, include_pad)


@kernel("A3 i i i i i i b A3")
def avg_pool_backward(g3, kh, kw, sh, sw, ph, pw, include_pad, dx):
    """dx (P, H, W): each input pixel gathers g/divisor of the windows that hold it."""
    e = cuda.grid(1)
    P, H, W = dx.shape
    Ho, Wo = g3.shape[1], g3.shape[2]
    if e < P * H * W:
        r, h, w = e // (H * W), (e // W) % H, e % W
        # i·sh − ph ≤ h < i·sh − ph + kh  ⇔  (h + ph − kh)/sh < i ≤ (h + ph)/sh
        i_lo, i_hi = max(0, (h + ph - kh) // sh + 1), min(Ho, (h + ph) // sh + 1)
        j_lo, j_hi = max(0, (w + pw - kw) // sw + 1), min(Wo, (w + pw) // sw + 1)
        acc = 0.0
        for i in range(i_lo, i_hi):
            for j in range(j_lo, j_hi):
                acc += g3[r, i, j] / _divisor(i, j, H, W, kh, kw, sh, sw, ph, pw, include_pad)
        dx[r, h, w] = acc


@kernel("A3 I1 I1 A3")
def nearest_forward(x3, src_h, src_w, out):
    e = cuda.grid(1)
    P, Ho, Wo = out.shape
    if e < P * Ho * Wo:
        r, i, j = e // (Ho * Wo), (e // Wo) % Ho, e % Wo
        out[r, i, j] = x3[r, src_h[i], src_w[j]]


@kernel("A3 I1 I1 A3")
def nearest_backward(g3, src_h, src_w, dx):
    e = cuda.grid(1)
    P, Ho, Wo = g3.shape
    if e < P * Ho * Wo:
        r, i, j = e // (Ho * Wo), (e // Wo) % Ho, e % Wo
        cuda.atomic.add(dx, (r, src_h[i], src_w[j]), g3[r, i, j])


@kernel("A3 I1 I1 A1 A1 I1 I1 A1 A1 A3")
def bilinear_forward(x3, h0, h1, lh0, lh1, w0, w1, lw0, lw1, out):
    e = cuda.grid(1)
    P, Ho, Wo = out.shape
    if e < P * Ho * Wo:
        r, i, j = e // (Ho * Wo), (e // Wo) % Ho, e % Wo
        top = lw0[j] * x3[r, h0[i], w0[j]] + lw1[j] * x3[r, h0[i], w1[j]]
        bot = lw0[j] * x3[r, h1[i], w0[j]] + lw1[j] * x3[r, h1[i], w1[j]]
        out[r, i, j] = lh0[i] * top + lh1[i] * bot


@kernel("A3 I1 I1 A1 A1 I1 I1 A1 A1 A3")
def bilinear_backward(g3, h0, h1, lh0, lh1, w0, w1, lw0, lw1, dx):
    e = cuda.grid(1)
    P, Ho, Wo = g3.shape
    if e < P * Ho * Wo:
        r, i, j = e // (Ho * Wo), (e // Wo) % Ho, e % Wo
        gv = g3[r, i, j]
        cuda.atomic.add(dx, (r, h0[i], w0[j]), lh0[i] * lw0[j] * gv)
        cuda.atomic.add(dx, (r, h0[i], w1[j]), lh0[i] * lw1[j] * gv)
        cuda.atomic.add(dx, (r, h1[i], w0[j]), lh1[i] * lw0[j] * gv)
        cuda.atomic.add(dx, (r, h1[i], w1[j]), lh1[i] * lw1[j] * gv)


def max_pool2d_forward_cuda(x, kernel_size, stride, padding):
    """cuda column of max_pool2d_forward."""
    xp = xp_of(x)
    N, C, H, W = x.shape
    Ho, Wo = pool_output_size(H, W, kernel_size, stride, padding)
    out, arg = xp.empty((N * C, Ho, Wo), x.dtype), xp.empty((N * C, Ho, Wo), np.int64)
    launch(max_pool_forward, out.size, _planes(x), *kernel_size, *stride, *padding, out, arg)
    return out.reshape(N, C, Ho, Wo), arg.reshape(N, C, Ho, Wo)


def max_pool2d_backward_cuda(g, argmax, x_shape):
    """cuda column of max_pool2d_backward (atomic scatter to the argmax)."""
    N, C, H, W = x_shape
    dx = xp_of(g).zeros((N * C, H * W), g.dtype)
    launch(max_pool_backward, g.size, _planes(g), _planes(argmax), dx)
    return dx.reshape(x_shape)


def avg_pool2d_forward_cuda(x, kernel_size, stride, padding, count_include_pad=True):
    """cuda column of avg_pool2d_forward."""
    N, C, H, W = x.shape
    Ho, Wo = pool_output_size(H, W, kernel_size, stride, padding)
    out = xp_of(x).empty((N * C, Ho, Wo), x.dtype)
    launch(avg_pool_forward, out.size, _planes(x), *kernel_size, *stride, *padding, bool(count_include_pad), out)
    return out.reshape(N, C, Ho, Wo)


def avg_pool2d_backward_cuda(g, x_shape, kernel_size, stride, padding, count_include_pad=True):
    """cuda column of avg_pool2d_backward (a gather: no atomics)."""
    N, C, H, W = x_shape
    dx = xp_of(g).empty((N * C, H, W), g.dtype)
    launch(avg_pool_backward, dx.size, _planes(g), *kernel_size, *stride, *padding, bool(count_include_pad), dx)
    return dx.reshape(x_shape)


def _sources(xp, mode, in_hw, out_hw, align_corners, scale_factor, dtype):
    """The per-axis source indices (and weights) on the arrays' device."""
    if mode == "nearest":
        return [xp.asarray(_cpu.nearest_source_index(n, m, s)) for n, m, s in zip(in_hw, out_hw, scale_factor)]
    per_axis = [_cpu.linear_source_weights(n, m, align_corners, s, dtype)
                for n, m, s in zip(in_hw, out_hw, scale_factor)]
    return [xp.asarray(a) for axis in per_axis for a in axis]  # h0, h1, lh0, lh1, w0, w1, lw0, lw1


def interpolate_forward_cuda(x, size, mode="nearest", align_corners=False, scale_factor=(None, None)):
    """cuda column of interpolate_forward."""
    xp = xp_of(x)
    N, C, H, W = x.shape
    out = xp.empty((N * C,) + tuple(size), x.dtype)
    src = _sources(xp, mode, (H, W), size, align_corners, scale_factor, x.dtype)
    launch(nearest_forward if mode == "nearest" else bilinear_forward, out.size, _planes(x), *src, out)
    return out.reshape((N, C) + tuple(size))


def interpolate_backward_cuda(g, x_shape, mode="nearest", align_corners=False, scale_factor=(None, None)):
    """cuda column of interpolate_backward (atomic scatter: the adjoint of the gather)."""
    xp = xp_of(g)
    N, C, H, W = x_shape
    dx = xp.zeros((N * C, H, W), g.dtype)
    src = _sources(xp, mode, (H, W), g.shape[2:], align_corners, scale_factor, g.dtype)
    launch(nearest_backward if mode == "nearest" else bilinear_backward, g.size, _planes(g), *src, dx)
    return dx.reshape(x_shape)
