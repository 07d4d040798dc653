"""conv2d and conv_transpose2d on the GPU (Numba CUDA): the ``cuda`` column of the conv rows.

The CPU twin, with the definitions and the reference loops, is ``npdiff/kernels/conv.py``;
the notation is the same (x (N, C, H, W), conv weight (O, C/groups, kh, kw), transposed
weight (C, O/groups, kh, kw), stride s, padding p, g the upstream gradient).

Every conv op here is one *implicit GEMM*: a matrix product whose operands are read straight
from the images instead of from an im2col matrix in memory. Three kernels cover the six
products (forward and two gradients of each of the two ops):

| kernel          | rows (M)   | columns        | reduction (K)  | computes                                  |
|-----------------|------------|----------------|----------------|-------------------------------------------|
| ``gemm_conv``   | out ch./g  | pixels N·Ho·Wo | C/g · kh · kw  | conv2d fwd; conv_transpose2d grad-input   |
| ``gemm_gather`` | out ch./g  | pixels N·Ho·Wo | C/g · kh · kw  | conv_transpose2d fwd; conv2d grad-input   |
| ``gemm_weight`` | out ch./g  | C/g · kh · kw  | pixels N·Ho·Wo | grad-weight of both (images swapped for the transposed op) |

  * ``gemm_conv``:  out[n, o, i, j] = b[o] + Σ_{c,u,v} w[o, c, u, v] · x[n, c, sh·i+u−ph, sw·j+v−pw].
  * ``gemm_gather``: the transposed conv read as a gather (each output pixel collects what the
    input pixels scattered onto it): out[n, o, y, z] = b[o] + Σ_{c,u,v} w[c, o, u, v] · x[n, c, i, j]
    with y = sh·i + u − ph, i.e. i = (y + ph − u)/sh when that divides exactly and 0 ≤ i < H
    (else the term is 0). conv2d's grad-input is this with x := g and w read as (O, C/g, kh, kw)
    = (input, output) channels of the transposed op: gx = conv_transpose2d(g, w).
  * ``gemm_weight``: gw[o, c, u, v] = Σ_{n,i,j} g[n, o, i, j] · x[n, c, sh·i+u−ph, sw·j+v−pw];
    conv_transpose2d's is the same sum with the image roles swapped (gw[c, o, u, v] =
    Σ x[n, c, i, j] · g[n, o, sh·i+u−ph, …]), so it calls this kernel with (x := g, g := x).

The loop in words (all three): a block of TILE×TILE threads owns a TILE×TILE tile of the
output matrix, one element per thread. It walks the reduction axis in steps of TILE; at each
step the block's threads load one TILE×TILE tile of each operand into shared memory (each
thread one element of each, decoding its matrix index into image coordinates and writing 0
for padding), wait, and each thread adds the TILE products of its row of one tile and its
column of the other; wait again before the next load. ``groups`` is the grid's third axis:
block z works on group z's channels only. Bias gradients are a per-channel block reduction
(``common.channel_sum``). Accumulation is in the data's dtype, as the CPU column's sgemm.
"""

from __future__ import annotations

import functools

from numba import cuda

from ..checks import conv2d_output_size, conv_transpose2d_output_size
from .common import TILE, blocks, kernel, numba_type, sum_channels, xp_of


@functools.lru_cache(maxsize=None)
def _kernels(dtype):
    """The three implicit-GEMM kernels with shared tiles of ``dtype``."""
    T = numba_type(dtype)

    @kernel("A4 A4 A1 b i i i i A4", dtype)
    def gemm_conv(x, w, b, has_b, sh, sw, ph, pw, out):
        """out (N, O, Ho, Wo) = conv2d(x (N, C, H, W), w (O, C/g, kh, kw)) + b; grid (pixels, O/g, g)."""
        wt = cuda.shared.array((TILE, TILE), T)  # wt[r, k]: weight rows of this block
        xt = cuda.shared.array((TILE, TILE), T)  # xt[k, q]: image columns of this block
        N, C, H, W = x.shape
        O, Cg, kh, kw = w.shape
        Ho, Wo = out.shape[2], out.shape[3]
        Og = O // (C // Cg)
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        grp = cuda.blockIdx.z
        o = cuda.blockIdx.y * TILE + ty  # output channel within the group (this thread's row)
        q = cuda.blockIdx.x * TILE + tx  # output pixel n·Ho·Wo + i·Wo + j (this thread's column)
        K, P = Cg * kh * kw, N * Ho * Wo
        acc = T(0)
        for k0 in range(0, K, TILE):
            # weight tile: row o, reduction index k = (c·kh + u)·kw + v
            k = k0 + tx
            wt[ty, tx] = w[grp * Og + o, k // (kh * kw), (k // kw) % kh, k % kw] if o < Og and k < K else T(0)
            # image tile: reduction index k0 + ty, column q (read 0 in the padding)
            k = k0 + ty
            val = T(0)
            if k < K and q < P:
                n, i, j = q // (Ho * Wo), (q // Wo) % Ho, q % Wo
                c, u, v = k // (kh * kw), (k // kw) % kh, k % kw
                h, z = sh * i + u - ph, sw * j + v - pw
                if 0 <= h < H and 0 <= z < W:
                    val = x[n, grp * Cg + c, h, z]
            xt[ty, tx] = val
            cuda.syncthreads()
            for kk in range(TILE):
                acc += wt[ty, kk] * xt[kk, tx]
            cuda.syncthreads()
        if o < Og and q < P:
            n, i, j = q // (Ho * Wo), (q // Wo) % Ho, q % Wo
            if has_b:
                acc += b[grp * Og + o]
            out[n, grp * Og + o, i, j] = acc

    @kernel("A4 A4 A1 b i i i i A4", dtype)
    def gemm_gather(x, w, b, has_b, sh, sw, ph, pw, out):
        """out (N, O, Ho, Wo) = conv_transpose2d(x (N, C, H, W), w (C, O/g, kh, kw)) + b as a gather."""
        wt = cuda.shared.array((TILE, TILE), T)  # wt[r, k] = w[c, r, u, v]
        xt = cuda.shared.array((TILE, TILE), T)  # xt[k, q]: the input pixel that lands on q through (u, v)
        N, C, H, W = x.shape
        _, Og, kh, kw = w.shape
        Ho, Wo = out.shape[2], out.shape[3]
        Cg = C // (out.shape[1] // Og)
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        grp = cuda.blockIdx.z
        o = cuda.blockIdx.y * TILE + ty
        q = cuda.blockIdx.x * TILE + tx
        K, P = Cg * kh * kw, N * Ho * Wo
        acc = T(0)
        for k0 in range(0, K, TILE):
            k = k0 + tx
            wt[ty, tx] = w[grp * Cg + k // (kh * kw), o, (k // kw) % kh, k % kw] if o < Og and k < K else T(0)
            k = k0 + ty
            val = T(0)
            if k < K and q < P:
                n, y, z = q // (Ho * Wo), (q // Wo) % Ho, q % Wo
                c, u, v = k // (kh * kw), (k // kw) % kh, k % kw
                hs, ws = y + ph - u, z + pw - v  # = s·i, s·j if an input pixel lands here
                if hs >= 0 and ws >= 0 and hs % sh == 0 and ws % sw == 0:
                    i, j = hs // sh, ws // sw
                    if i < H and j < W:
                        val = x[n, grp * Cg + c, i, j]
            xt[ty, tx] = val
            cuda.syncthreads()
            for kk in range(TILE):
                acc += wt[ty, kk] * xt[kk, tx]
            cuda.syncthreads()
        if o < Og and q < P:
            n, y, z = q // (Ho * Wo), (q // Wo) % Ho, q % Wo
            if has_b:
                acc += b[grp * Og + o]
            out[n, grp * Og + o, y, z] = acc

    @kernel("A4 A4 i i i i A4", dtype)
    def gemm_weight(x, g, sh, sw, ph, pw, gw):
        """gw (O, C/g, kh, kw) = Σ over (n, i, j) of g (N, O, Ho, Wo) times x's windows (N, C, H, W)."""
        gt = cuda.shared.array((TILE, TILE), T)  # gt[r, p] = g[n, o, i, j], p = pixel
        xt = cuda.shared.array((TILE, TILE), T)  # xt[p, k] = x under pixel p's window at k = (c, u, v)
        N, C, H, W = x.shape
        O, Cg, kh, kw = gw.shape
        Ho, Wo = g.shape[2], g.shape[3]
        Og = O // (C // Cg)
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        grp = cuda.blockIdx.z
        o = cuda.blockIdx.y * TILE + ty
        k = cuda.blockIdx.x * TILE + tx  # this thread's weight element (c·kh + u)·kw + v
        K, P = Cg * kh * kw, N * Ho * Wo
        acc = T(0)
        for p0 in range(0, P, TILE):
            p = p0 + tx
            val = T(0)
            if o < Og and p < P:
                val = g[p // (Ho * Wo), grp * Og + o, (p // Wo) % Ho, p % Wo]
            gt[ty, tx] = val
            p = p0 + ty
            val = T(0)
            if k < K and p < P:
                n, i, j = p // (Ho * Wo), (p // Wo) % Ho, p % Wo
                c, u, v = k // (kh * kw), (k // kw) % kh, k % kw
                h, z = sh * i + u - ph, sw * j + v - pw
                if 0 <= h < H and 0 <= z < W:
                    val = x[n, grp * Cg + c, h, z]
            xt[ty, tx] = val
            cuda.syncthreads()
            for pp in range(TILE):
                acc += gt[ty, pp] * xt[pp, tx]
            cuda.syncthreads()
        if o < Og and k < K:
            gw[grp * Og + o, k // (kh * kw), (k // kw) % kh, k % kw] = acc

    return gemm_conv, gemm_gather, gemm_weight


def _launch_out(kern, x, w, b, stride, padding, out, rows, groups):
    """Run ``gemm_conv`` or ``gemm_gather`` into ``out``: grid (pixel tiles, row tiles, groups)."""
    has_b = b is not None
    bb = b if has_b else xp_of(x).zeros(1, x.dtype)
    P = out.shape[0] * out.shape[2] * out.shape[3]
    grid = (blocks(P, TILE), blocks(rows, TILE), groups)
    kern[grid, (TILE, TILE)](x, w, bb, has_b, stride[0], stride[1], padding[0], padding[1], out)
    return out


def _weight_grad(x, g, stride, padding, gw_shape, groups):
    """gemm_weight into a new (rows, C/g, kh, kw) array: grid (weight-column tiles, row tiles, groups)."""
    gw = xp_of(x).empty(gw_shape, x.dtype)
    K = gw_shape[1] * gw_shape[2] * gw_shape[3]
    grid = (blocks(K, TILE), blocks(gw_shape[0] // groups, TILE), groups)
    _kernels(x.dtype)[2][grid, (TILE, TILE)](x, g, stride[0], stride[1], padding[0], padding[1], gw)
    return gw


def _bias_grad(g):
    N, O = g.shape[:2]
    return sum_channels(g.reshape(N, O, -1))  # (N, O, Ho·Wo) -> (O,)


def conv2d_forward_cuda(x, w, b, stride, padding, groups):
    """cuda column of conv2d_forward: ``gemm_conv``."""
    Ho, Wo = conv2d_output_size(x.shape[2], x.shape[3], w.shape[2], w.shape[3], stride, padding)
    out = xp_of(x).empty((x.shape[0], w.shape[0], Ho, Wo), x.dtype)
    return _launch_out(_kernels(x.dtype)[0], x, w, b, stride, padding, out, w.shape[0] // groups, groups)


def conv2d_backward_cuda(x, w, g, stride, padding, groups, need_x, need_w, need_b):
    """cuda column of conv2d_backward: gx by ``gemm_gather`` (= conv_transpose2d(g, w)), gw by ``gemm_weight``."""
    gx = gw = gb = None
    if need_x:
        gx = xp_of(x).empty(x.shape, x.dtype)
        _launch_out(_kernels(x.dtype)[1], g, w, None, stride, padding, gx, x.shape[1] // groups, groups)
    if need_w:
        gw = _weight_grad(x, g, stride, padding, w.shape, groups)
    if need_b:
        gb = _bias_grad(g)
    return gx, gw, gb


def conv_transpose2d_forward_cuda(x, w, b, stride, padding, output_padding, groups):
    """cuda column of conv_transpose2d_forward: ``gemm_gather``."""
    Ho, Wo = conv_transpose2d_output_size(x.shape[2], x.shape[3], w.shape[2], w.shape[3], stride, padding,
                                          output_padding)
    out = xp_of(x).empty((x.shape[0], w.shape[1] * groups, Ho, Wo), x.dtype)
    return _launch_out(_kernels(x.dtype)[1], x, w, b, stride, padding, out, w.shape[1], groups)


def conv_transpose2d_backward_cuda(x, w, g, stride, padding, output_padding, groups, need_x, need_w, need_b):
    """cuda column of conv_transpose2d_backward: gx = conv2d(g, w) by ``gemm_conv``; gw by ``gemm_weight``
    with the images swapped (gw[c, o, u, v] = Σ x[n, c, i, j]·g[n, o, s·i+u−p, …])."""
    gx = gw = gb = None
    if need_x:
        gx = xp_of(x).empty(x.shape, x.dtype)
        _launch_out(_kernels(x.dtype)[0], g, w, None, stride, padding, gx, x.shape[1] // groups, groups)
    if need_w:
        gw = _weight_grad(g, x, stride, padding, w.shape, groups)
    if need_b:
        gb = _bias_grad(g)
    return gx, gw, gb
