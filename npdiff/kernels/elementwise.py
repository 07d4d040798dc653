"""Activations, softmax, mean-squared error and dropout, forward and backward.

Notation: x input, y output, g = ∂L/∂y (upstream gradient), σ(x) = 1 / (1 + e^{−x}),
Φ(x) = ½(1 + erf(x/√2)) (standard normal CDF), φ(x) = e^{−x²/2}/√(2π) (its density).

| op | y | ∂y/∂x |
|---|---|---|
| relu | max(x, 0) | 1[x > 0] (0 at x = 0, as torch) |
| sigmoid | σ(x) | y(1 − y) |
| silu | x σ(x)  (Elfwing et al. 2018; "swish") | σ(x)(1 + x(1 − σ(x))) |
| gelu "none" | x Φ(x)  (Hendrycks & Gimpel 2016, eq. 1) | Φ(x) + x φ(x) |
| gelu "tanh" | ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³) | ½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²) |
| softmax | e^{x_j − m} / Σ_k e^{x_k − m}, m = max_k x_k | gx = y ∘ (g − Σ_j g_j y_j) |
| log_softmax | x_j − m − log Σ_k e^{x_k − m} | gx = g − e^{y} Σ_j g_j |
| mse_loss | (x − t)², then mean / sum / none | ∂/∂x = 2(x − t)·g (÷ n for mean), ∂/∂t = −∂/∂x |
| dropout | x·mask / (1 − p), mask ~ Bernoulli(1 − p) | g·mask / (1 − p) |

σ is evaluated in the stable form (e^{x}/(1 + e^{x}) for x < 0), so no exp overflows;
softmax subtracts the row max, so logits of 1e30 are exact.

Each op: reference (a Python loop over elements / rows, the formula visible), fast CPU
(Numba, ``prange`` over flat chunks of CHUNK elements or over softmax rows, writing into a
preallocated ``out``), xp-generic (numpy or cupy ufuncs), and a dispatch function by array
type. Fast kernels take flat (or (rows, cols)) C-contiguous arrays; the dispatch makes them.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from .config import jit_parallel, jit_serial, prange
from .vexp import exp_constants, exp_inplace

CHUNK = 16384
_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715
GELU_APPROXIMATIONS = ("none", "tanh")


# ---------------------------------------------------------------------------
# reference (plain loops)


def _sigmoid_py(v):
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


def _gelu_py(v, approximate):
    if approximate == "tanh":
        return 0.5 * v * (1.0 + math.tanh(_SQRT_2_OVER_PI * (v + _GELU_C * v**3)))
    return 0.5 * v * (1.0 + math.erf(v * _SQRT_HALF))


def _gelu_grad_py(v, approximate):
    if approximate == "tanh":
        t = math.tanh(_SQRT_2_OVER_PI * (v + _GELU_C * v**3))
        return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_C * v * v)
    return 0.5 * (1.0 + math.erf(v * _SQRT_HALF)) + v * math.exp(-0.5 * v * v) * _INV_SQRT_2PI


_REFERENCE_FORWARD = {
    "relu": lambda v: v if v > 0 else 0.0,
    "sigmoid": _sigmoid_py,
    "silu": lambda v: v * _sigmoid_py(v),
    "gelu": lambda v: _gelu_py(v, "none"),
    "gelu_tanh": lambda v: _gelu_py(v, "tanh"),
}
_REFERENCE_GRAD = {  # ∂y/∂x as a function of x
    "relu": lambda v: 1.0 if v > 0 else 0.0,
    "sigmoid": lambda v: _sigmoid_py(v) * (1.0 - _sigmoid_py(v)),
    "silu": lambda v: _sigmoid_py(v) * (1.0 + v * (1.0 - _sigmoid_py(v))),
    "gelu": lambda v: _gelu_grad_py(v, "none"),
    "gelu_tanh": lambda v: _gelu_grad_py(v, "tanh"),
}


def unary_forward_reference(op, x):
    """y[idx] = f(x[idx]) for every element; ``op`` in relu, sigmoid, silu, gelu, gelu_tanh."""
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        out[idx] = _REFERENCE_FORWARD[op](float(x[idx]))
    return out


def unary_backward_reference(op, g, x):
    """gx[idx] = g[idx] · f'(x[idx])."""
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        out[idx] = g[idx] * _REFERENCE_GRAD[op](float(x[idx]))
    return out


def softmax_forward_reference(x, dim, log=False):
    """Row by row along ``dim``: m = max, y = e^{x−m}/Σe^{x−m} (or x − m − log Σe^{x−m})."""
    xm = np.moveaxis(x, dim, -1)
    out = np.empty_like(xm)
    for idx in np.ndindex(xm.shape[:-1]):
        row = xm[idx]
        m = max(float(r) for r in row)
        s = sum(math.exp(float(r) - m) for r in row)
        for j, r in enumerate(row):
            out[idx + (j,)] = float(r) - m - math.log(s) if log else math.exp(float(r) - m) / s
    return np.moveaxis(out, -1, dim)


def softmax_backward_reference(g, y, dim, log=False):
    """softmax: gx_j = y_j (g_j − Σ_k g_k y_k); log_softmax: gx_j = g_j − e^{y_j} Σ_k g_k."""
    gm, ym = np.moveaxis(g, dim, -1), np.moveaxis(y, dim, -1)
    out = np.empty_like(gm)
    for idx in np.ndindex(gm.shape[:-1]):
        if log:
            total = sum(float(a) for a in gm[idx])
            for j in range(gm.shape[-1]):
                out[idx + (j,)] = gm[idx + (j,)] - math.exp(ym[idx + (j,)]) * total
        else:
            dot = sum(float(a) * float(b) for a, b in zip(gm[idx], ym[idx]))
            for j in range(gm.shape[-1]):
                out[idx + (j,)] = ym[idx + (j,)] * (gm[idx + (j,)] - dot)
    return np.moveaxis(out, -1, dim)


def mse_loss_forward_reference(x, t, reduction="mean"):
    """e = (x − t)² elementwise, then Σe / n ("mean"), Σe ("sum") or e ("none")."""
    e = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        e[idx] = (x[idx] - t[idx]) ** 2
    if reduction == "none":
        return e
    total = sum(float(v) for v in e.ravel())
    return np.asarray(total / e.size if reduction == "mean" else total, dtype=x.dtype)


def mse_loss_backward_reference(g, x, t, reduction="mean"):
    """gx = 2(x − t)·g (g a scalar for mean/sum, ÷ n for mean); gt = −gx."""
    gx = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        gi = g[idx] if reduction == "none" else g / (x.size if reduction == "mean" else 1)
        gx[idx] = 2.0 * (x[idx] - t[idx]) * gi
    return gx, -gx


def dropout_forward_reference(x, mask, p):
    """y = x·mask/(1 − p) with mask ∈ {0, 1} (Srivastava et al. 2014, inverted scaling)."""
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        out[idx] = x[idx] * mask[idx] / (1.0 - p) if p < 1 else 0.0
    return out


# ---------------------------------------------------------------------------
# fast CPU path (Numba): prange over flat chunks; each chunk a straight loop


@jit_serial
def _tanh_arg(v):
    return 0.7978845608028654 * (v + 0.044715 * v * v * v)  # √(2/π)(x + 0.044715x³)


@jit_serial
def _exp_neg_abs(code, x, lo, m, buf, ib, fb, C, fast):
    """buf[i] = e^{−|a|} for the chunk x[lo:lo+m], a = x (σ-based ops) or 2u (tanh GELU).

    σ(x) = (1 if x ≥ 0 else e)/(1 + e) and tanh(|u|) = (1 − e)/(1 + e) with e = e^{−|a|} ≤ 1:
    no exp ever overflows, and the vector exp (vexp.py) replaces one libm call per element.
    """
    for i in range(m):
        v = x[lo + i]
        a = 2 * _tanh_arg(v) if code == 4 else v
        buf[i] = -abs(a)
    exp_inplace(buf, m, ib, fb, C, fast)


@jit_parallel
def unary_forward_numba(code, x, out, C, fast):
    """out[t] = f(x[t]); code 0 relu, 1 sigmoid, 2 silu, 3 gelu (erf), 4 gelu (tanh)."""
    n = x.shape[0]
    one = C[8]
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo = c * CHUNK
        m = min(n, lo + CHUNK) - lo
        if code == 0:
            for t in range(lo, lo + m):
                v = x[t]
                out[t] = v if v > 0 else 0
        elif code == 3:
            for t in range(lo, lo + m):
                v = x[t]
                out[t] = 0.5 * v * (1.0 + math.erf(v * 0.7071067811865476))
        else:
            buf = np.empty(m, x.dtype)
            ib = np.empty(m, np.int32)
            _exp_neg_abs(code, x, lo, m, buf, ib, ib.view(np.float32), C, fast)
            for i in range(m):
                v = x[lo + i]
                e = buf[i]
                if code == 4:
                    th = (one - e) / (one + e)  # tanh(|u|)
                    th = th if v >= 0 else -th  # u has the sign of x
                    out[lo + i] = 0.5 * v * (one + th)
                else:
                    s = (one if v >= 0 else e) / (one + e)  # σ(x), stable form
                    out[lo + i] = s if code == 1 else v * s


@jit_parallel
def unary_backward_numba(code, g, x, out, C, fast):
    """out[t] = g[t]·f'(x[t]) (same codes as the forward)."""
    n = x.shape[0]
    one = C[8]
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo = c * CHUNK
        m = min(n, lo + CHUNK) - lo
        if code == 0:
            for t in range(lo, lo + m):
                out[t] = g[t] if x[t] > 0 else 0
        elif code == 3:
            for t in range(lo, lo + m):
                v = x[t]
                cdf = 0.5 * (1.0 + math.erf(v * 0.7071067811865476))
                out[t] = g[t] * (cdf + v * math.exp(-0.5 * v * v) * 0.3989422804014327)
        else:
            buf = np.empty(m, x.dtype)
            ib = np.empty(m, np.int32)
            _exp_neg_abs(code, x, lo, m, buf, ib, ib.view(np.float32), C, fast)
            for i in range(m):
                t = lo + i
                v = x[t]
                e = buf[i]
                if code == 4:
                    th = (one - e) / (one + e)
                    th = th if v >= 0 else -th
                    du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * v * v)
                    out[t] = g[t] * (0.5 * (one + th) + 0.5 * v * (one - th * th) * du)
                else:
                    s = (one if v >= 0 else e) / (one + e)
                    if code == 1:
                        out[t] = g[t] * s * (one - s)
                    else:
                        out[t] = g[t] * s * (one + v * (one - s))


@jit_parallel
def softmax_forward_numba(x, out, log):
    """Rows of x (R, C): m = max, s = Σ e^{x−m}; out = e^{x−m}/s or x − m − log s."""
    R, C = x.shape
    for r in prange(R):
        m = x[r, 0]
        for j in range(1, C):
            if x[r, j] > m:
                m = x[r, j]
        s = 0.0
        for j in range(C):
            e = math.exp(x[r, j] - m)
            out[r, j] = e
            s += e
        if log:
            ls = math.log(s)
            for j in range(C):
                out[r, j] = x[r, j] - m - ls
        else:
            inv = 1.0 / s
            for j in range(C):
                out[r, j] = out[r, j] * inv


@jit_parallel
def softmax_backward_numba(g, y, out, log):
    """softmax: out = y(g − Σ g y); log_softmax: out = g − e^{y} Σ g (rows of (R, C))."""
    R, C = g.shape
    for r in prange(R):
        acc = 0.0
        for j in range(C):
            acc += g[r, j] if log else g[r, j] * y[r, j]
        for j in range(C):
            if log:
                out[r, j] = g[r, j] - math.exp(y[r, j]) * acc
            else:
                out[r, j] = y[r, j] * (g[r, j] - acc)


@jit_parallel
def squared_error_numba(x, t, out, partial):
    """out[i] = (x[i] − t[i])²; partial[c] = Σ over chunk c (one slot per chunk: no race)."""
    n = x.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        s = 0.0
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            d = x[i] - t[i]
            out[i] = d * d
            s += d * d
        partial[c] = s


@jit_parallel
def scale_diff_numba(x, t, g, scale, out):
    """out[i] = scale·(x[i] − t[i])·g[i]  (g has one element when broadcast)."""
    n = x.shape[0]
    one = g.shape[0] == 1
    for c in prange((n + CHUNK - 1) // CHUNK):
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            out[i] = scale * (x[i] - t[i]) * (g[0] if one else g[i])


@jit_parallel
def masked_scale_numba(x, mask, scale, out):
    """out[i] = x[i]·mask[i]·scale (dropout forward and backward)."""
    n = x.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            out[i] = x[i] * scale if mask[i] else 0


# ---------------------------------------------------------------------------
# xp-generic vectorised versions (numpy or cupy)


def _erf(xp, a):
    if xp is np:
        from scipy.special import erf
    else:  # pragma: no cover - GPU only
        from cupyx.scipy.special import erf
    return erf(a)


def _sigmoid_xp(xp, x):
    e = xp.exp(-xp.abs(x))  # ≤ 1: never overflows
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def unary_forward_xp(op, x):
    xp = get_array_module(x)
    if op == "relu":
        return xp.maximum(x, 0)
    if op == "sigmoid":
        return _sigmoid_xp(xp, x).astype(x.dtype, copy=False)
    if op == "silu":
        return (x * _sigmoid_xp(xp, x)).astype(x.dtype, copy=False)
    if op == "gelu":
        return (0.5 * x * (1 + _erf(xp, x * _SQRT_HALF))).astype(x.dtype, copy=False)
    return (0.5 * x * (1 + xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x**3)))).astype(x.dtype, copy=False)


def unary_backward_xp(op, g, x):
    xp = get_array_module(x)
    if op == "relu":
        d = (x > 0).astype(x.dtype)
    elif op == "sigmoid":
        s = _sigmoid_xp(xp, x)
        d = s * (1 - s)
    elif op == "silu":
        s = _sigmoid_xp(xp, x)
        d = s * (1 + x * (1 - s))
    elif op == "gelu":
        d = 0.5 * (1 + _erf(xp, x * _SQRT_HALF)) + x * xp.exp(-0.5 * x * x) * _INV_SQRT_2PI
    else:
        th = xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x**3))
        d = 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * _SQRT_2_OVER_PI * (1 + 3 * _GELU_C * x * x)
    return (g * d).astype(x.dtype, copy=False)


def softmax_forward_xp(x, dim, log=False):
    xp = get_array_module(x)
    z = x - x.max(axis=dim, keepdims=True)
    if log:
        return z - xp.log(xp.exp(z).sum(axis=dim, keepdims=True))
    e = xp.exp(z)
    return e / e.sum(axis=dim, keepdims=True)


def softmax_backward_xp(g, y, dim, log=False):
    xp = get_array_module(g)
    if log:
        return g - xp.exp(y) * g.sum(axis=dim, keepdims=True)
    return y * (g - (g * y).sum(axis=dim, keepdims=True))


def mse_loss_forward_xp(x, t, reduction="mean"):
    e = (x - t) ** 2
    if reduction == "none":
        return e
    return (e.mean() if reduction == "mean" else e.sum()).astype(x.dtype)


def mse_loss_backward_xp(g, x, t, reduction="mean"):
    k = 2.0 / x.size if reduction == "mean" else 2.0
    gx = ((x - t) * (g * k)).astype(x.dtype, copy=False)
    return gx, -gx


# ---------------------------------------------------------------------------
# dispatch (numpy -> Numba, cupy -> xp)

_CODES = {"relu": 0, "sigmoid": 1, "silu": 2, "gelu": 3, "gelu_tanh": 4}


def _flat(a, dtype=None):
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1)


def unary_forward(op, x):
    """y = f(x) for op in relu, sigmoid, silu, gelu (exact erf), gelu_tanh."""
    if op not in _CODES:
        raise ValueError(f"unknown activation {op!r}; expected one of {sorted(_CODES)}")
    if get_array_module(x) is not np:
        return unary_forward_xp(op, x)
    out = np.empty(x.shape, x.dtype)
    unary_forward_numba(_CODES[op], _flat(x), out.reshape(-1), exp_constants(x.dtype), x.dtype == np.float32)
    return out


def unary_backward(op, g, x):
    """gx = g·f'(x)."""
    if get_array_module(x) is not np:
        return unary_backward_xp(op, g, x)
    out = np.empty(x.shape, x.dtype)
    unary_backward_numba(_CODES[op], _flat(g, x.dtype), _flat(x), out.reshape(-1), exp_constants(x.dtype),
                         x.dtype == np.float32)
    return out


def _rows(a, dim, dtype=None):
    am = np.moveaxis(a, dim, -1)  # (..., C)
    return np.ascontiguousarray(am, dtype=dtype).reshape(-1, am.shape[-1]), am.shape  # (R, C)


def softmax_forward(x, dim, log=False):
    """Softmax (or log-softmax) along ``dim``, max-subtracted."""
    if get_array_module(x) is not np:
        return softmax_forward_xp(x, dim, log)
    rows, shape = _rows(x, dim)
    out = np.empty_like(rows)
    if rows.size:
        softmax_forward_numba(rows, out, log)
    return np.moveaxis(out.reshape(shape), -1, dim)


def softmax_backward(g, y, dim, log=False):
    """Gradient of softmax / log-softmax from the saved output ``y``."""
    if get_array_module(y) is not np:
        return softmax_backward_xp(g, y, dim, log)
    gr, shape = _rows(g, dim, y.dtype)
    yr, _ = _rows(y, dim)
    out = np.empty_like(yr)
    if yr.size:
        softmax_backward_numba(gr, yr, out, log)
    return np.moveaxis(out.reshape(shape), -1, dim)


def mse_loss_forward(x, t, reduction="mean"):
    """Squared error (x − t)², reduced by "mean", "sum" or "none"."""
    if get_array_module(x, t) is not np:
        return mse_loss_forward_xp(x, t, reduction)
    e = np.empty(x.shape, x.dtype)
    partial = np.zeros(max(1, -(-x.size // CHUNK)), np.float64)
    squared_error_numba(_flat(x), _flat(t, x.dtype), e.reshape(-1), partial)
    if reduction == "none":
        return e
    total = partial.sum()
    return np.asarray(total / x.size if reduction == "mean" else total, dtype=x.dtype)


def mse_loss_backward(g, x, t, reduction="mean"):
    """(gx, gt) = (2(x − t)g/n, −gx) for "mean"; without /n for "sum"; g elementwise for "none"."""
    if get_array_module(x, t) is not np:
        return mse_loss_backward_xp(g, x, t, reduction)
    k = 2.0 / x.size if reduction == "mean" else 2.0
    gx = np.empty(x.shape, x.dtype)
    scale_diff_numba(_flat(x), _flat(t, x.dtype), _flat(g, x.dtype), x.dtype.type(k), gx.reshape(-1))
    return gx, -gx


def dropout_mask(shape, p, generator=None, xp=np):
    """Keep-mask for dropout: True with probability 1 − p (drawn from ``generator``)."""
    from ..backend import default_generator

    rng = default_generator() if generator is None else generator
    keep = rng.random(shape) >= p
    return keep if xp is np else xp.asarray(keep)


def dropout_apply(x, mask, p):
    """x·mask/(1 − p) — the forward, and (applied to g) the backward; p = 1 gives zeros."""
    scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
    if get_array_module(x) is not np:
        return (x * mask * scale).astype(x.dtype, copy=False)
    out = np.empty(x.shape, x.dtype)
    masked_scale_numba(_flat(x), _flat(mask), x.dtype.type(scale), out.reshape(-1))
    return out
