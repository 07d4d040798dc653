"""Activations, softmax, mean-squared error and dropout on the GPU (Numba CUDA): the ``cuda``
column of the elementwise rows.

The CPU twin, with the table of formulas and derivatives and the reference loops, is
``npdiff/kernels/elementwise.py``. As there, each activation is a named pair of scalar
functions, value and derivative (minitorch's ``operators.py`` pattern), here CUDA device
functions, mapped by one kernel factory (``_map`` / ``_zip``): one thread per element,
out[e] = f(x[e]) or g[e]·f'(x[e]). The stable forms are the CPU's: σ from e = e^{−|x|} ≤ 1,
Φ(x) = ½ erfc(−x/√2), ½(1 + tanh u) = σ(2u) — no overflow, no cancellation in the tails.

  * softmax: rows moved last (R, C); one thread per row: max, Σ e^{x−m}, write (a row is a
    few hundred numbers in npdiff's models; attention's softmax lives inside its own kernel).
  * mse: one thread per element for (x − t)², then a two-level sum: each block reduces its
    share to one float64 (``common.block_sum``), one more block sums the block totals.
  * dropout: one thread per element, x·mask/(1 − p).
"""

from __future__ import annotations

import math

import numba
from numba import cuda

from .. import elementwise as _cpu
from .common import BLOCK, block_sum, blocks, kernel, launch, threads_for, xp_of

# -- scalar pairs (device functions) ------------------------------------------------------


@cuda.jit(device=True)
def _sig(v):
    e = math.exp(-abs(v))  # ≤ 1
    return (1.0 if v >= 0 else e) / (1.0 + e)


@cuda.jit(device=True)
def relu(v):
    return v if v > 0 else 0.0


@cuda.jit(device=True)
def relu_grad(v):
    return 1.0 if v > 0 else 0.0  # 0 at x = 0, as torch


@cuda.jit(device=True)
def sigmoid(v):
    return _sig(v)


@cuda.jit(device=True)
def sigmoid_grad(v):
    s = _sig(v)
    return s * (1.0 - s)


@cuda.jit(device=True)
def silu(v):
    return v * _sig(v)


@cuda.jit(device=True)
def silu_grad(v):
    s = _sig(v)
    return s * (1.0 + v * (1.0 - s))


@cuda.jit(device=True)
def gelu(v):
    return 0.5 * v * math.erfc(-v * 0.7071067811865476)  # x Φ(x)


@cuda.jit(device=True)
def gelu_grad(v):
    return 0.5 * math.erfc(-v * 0.7071067811865476) + v * math.exp(-0.5 * v * v) * 0.3989422804014327


@cuda.jit(device=True)
def _two_u(v):
    return 2.0 * 0.7978845608028654 * (v + 0.044715 * v * v * v)  # 2u, u = √(2/π)(x + 0.044715x³)


@cuda.jit(device=True)
def gelu_tanh(v):
    return v * _sig(_two_u(v))  # ½x(1 + tanh u) = x σ(2u)


@cuda.jit(device=True)
def gelu_tanh_grad(v):
    e = math.exp(-abs(_two_u(v)))
    du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * v * v)
    return _sig(_two_u(v)) + 2.0 * v * e / ((1.0 + e) * (1.0 + e)) * du  # σ(2u) + ½x(1 − tanh²u)u'


PAIRS = {"relu": (relu, relu_grad), "sigmoid": (sigmoid, sigmoid_grad), "silu": (silu, silu_grad),
         "gelu": (gelu, gelu_grad), "gelu_tanh": (gelu_tanh, gelu_tanh_grad)}
assert set(PAIRS) == set(_cpu.ACTIVATIONS), "every activation of the CPU table has a GPU pair"


def _map(name, f):
    def fn(x, out):
        e = cuda.grid(1)
        if e < x.shape[0]:
            out[e] = f(x[e])

    fn.__name__ = f"map_{name}"
    fn.__doc__ = f"out[e] = {name}(x[e]): one thread per element."
    return kernel("A1 A1")(fn)


def _zip(name, df):
    def fn(g, x, out):
        e = cuda.grid(1)
        if e < x.shape[0]:
            out[e] = g[e] * df(x[e])

    fn.__name__ = f"grad_{name}"
    fn.__doc__ = f"out[e] = g[e]·{name}'(x[e]): one thread per element."
    return kernel("A1 A1 A1")(fn)


MAPS = {name: _map(name, f) for name, (f, _) in PAIRS.items()}
GRADS = {name: _zip(name, df) for name, (_, df) in PAIRS.items()}


def _columns(name):
    def forward(x):
        out = xp_of(x).empty_like(x)
        launch(MAPS[name], x.size, x.reshape(-1), out.reshape(-1))
        return out

    def backward(g, x):
        out = xp_of(x).empty_like(x)
        launch(GRADS[name], x.size, g.reshape(-1), x.reshape(-1), out.reshape(-1))
        return out

    forward.__name__, backward.__name__ = f"{name}_forward_cuda", f"{name}_backward_cuda"
    return forward, backward


for _name in PAIRS:  # relu_forward_cuda(x), relu_backward_cuda(g, x), ...
    globals()[f"{_name}_forward_cuda"], globals()[f"{_name}_backward_cuda"] = _columns(_name)


# -- softmax --------------------------------------------------------------------------------


@kernel("A2 b A2")
def softmax_rows(x, log, out):
    """Row r of x (R, C): m = max, s = Σ e^{x−m}; out = e^{x−m}/s, or x − m − log s."""
    r = cuda.grid(1)
    R, C = x.shape
    if r < R:
        m = x[r, 0]
        for j in range(1, C):
            m = max(m, x[r, j])
        s = 0.0
        for j in range(C):
            s += math.exp(x[r, j] - m)
        if log:
            ls = math.log(s)
            for j in range(C):
                out[r, j] = x[r, j] - m - ls
        else:
            for j in range(C):
                out[r, j] = math.exp(x[r, j] - m) / s


@kernel("A2 A2 b A2")
def softmax_grad_rows(g, y, log, out):
    """softmax: out = y(g − Σ g y); log_softmax: out = g − e^{y} Σ g."""
    r = cuda.grid(1)
    R, C = g.shape
    if r < R:
        acc = 0.0
        for j in range(C):
            acc += g[r, j] if log else g[r, j] * y[r, j]
        for j in range(C):
            out[r, j] = g[r, j] - math.exp(y[r, j]) * acc if log else y[r, j] * (g[r, j] - acc)


def _rows(a, dim):
    xp = xp_of(a)
    am = xp.moveaxis(a, dim, -1)  # (..., C)
    return xp.ascontiguousarray(am).reshape(-1, am.shape[-1]), am.shape  # (R, C)


def softmax_forward_cuda(x, dim, log=False):
    """cuda column of softmax_forward: one thread per row."""
    xp = xp_of(x)
    rows, shape = _rows(x, dim)
    out = xp.empty_like(rows)
    if rows.size:
        launch(softmax_rows, rows.shape[0], rows, bool(log), out)
    return xp.moveaxis(out.reshape(shape), -1, dim)


def softmax_backward_cuda(g, y, dim, log=False):
    """cuda column of softmax_backward."""
    xp = xp_of(y)
    gr, shape = _rows(g.astype(y.dtype, copy=False), dim)
    yr, _ = _rows(y, dim)
    out = xp.empty_like(yr)
    if yr.size:
        launch(softmax_grad_rows, yr.shape[0], gr, yr, bool(log), out)
    return xp.moveaxis(out.reshape(shape), -1, dim)


# -- mse, dropout ---------------------------------------------------------------------------


@kernel("A1 A1 A1")
def squared_error(x, t, out):
    e = cuda.grid(1)
    if e < x.shape[0]:
        d = x[e] - t[e]
        out[e] = d * d


@kernel("A1 D1")
def block_totals(a, totals):
    """totals[b] = Σ of the elements b, b + B, b + 2B, … of a's blocks' share (grid-stride, float64)."""
    buf = cuda.shared.array(BLOCK, numba.float64)
    acc = 0.0
    for e in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        acc += a[e]
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        totals[cuda.blockIdx.x] = total


def _sum(a):
    """Σ a (flat) as a float64 array of one element, on a's device: block totals, then their total."""
    xp = xp_of(a)
    t = threads_for(a.size)
    nb = min(blocks(a.size, t), BLOCK)
    totals, total = xp.empty(nb), xp.empty(1)
    block_totals[nb, t](a, totals)
    block_totals[1, threads_for(nb)](totals, total)
    return total


@kernel("A1 A1 A1 t A1")
def scale_diff(x, t, g, scale, out):
    """out = scale·(x − t)·g (g of one element when broadcast)."""
    e = cuda.grid(1)
    if e < x.shape[0]:
        out[e] = scale * (x[e] - t[e]) * (g[0] if g.shape[0] == 1 else g[e])


@kernel("A1 M1 t A1")
def masked_scale(x, mask, scale, out):
    e = cuda.grid(1)
    if e < x.shape[0]:
        out[e] = x[e] * scale if mask[e] else 0


def mse_loss_forward_cuda(x, t, reduction="mean"):
    """cuda column of mse_loss_forward."""
    xp = xp_of(x)
    err = xp.empty_like(x)
    launch(squared_error, x.size, x.reshape(-1), t.reshape(-1), err.reshape(-1))
    if reduction == "none":
        return err
    total = _sum(err.reshape(-1))  # (1,) float64
    return (total / x.size if reduction == "mean" else total).astype(x.dtype).reshape(())


def mse_loss_backward_cuda(g, x, t, reduction="mean"):
    """cuda column of mse_loss_backward: (gx, −gx)."""
    k = 2.0 / x.size if reduction == "mean" else 2.0
    gx = xp_of(x).empty_like(x)
    launch(scale_diff, x.size, x.reshape(-1), t.reshape(-1), g.reshape(-1), x.dtype.type(k),
                                             gx.reshape(-1))
    return gx, -gx


def dropout_forward_cuda(x, mask, p):
    """cuda column of dropout_forward: x·mask/(1 − p) (zeros for p = 1)."""
    out = xp_of(x).empty_like(x)
    scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
    launch(masked_scale, x.size, x.reshape(-1), mask.reshape(-1), x.dtype.type(scale), out.reshape(-1))
    return out

