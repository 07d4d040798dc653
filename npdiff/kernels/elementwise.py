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

Each op: reference (a Python loop over elements / rows, the formula visible), numba (each
activation a named pair of scalar functions, value and derivative, mapped by one parallel
kernel factory over flat chunks of CHUNK elements; softmax over rows; ``config.parallel_for``
splits the chunks (rows) over threads; all writing
into a preallocated ``out``), xp-generic (numpy or cupy ufuncs). The columns are registered
in ``table.py``; the one dispatch validates (``checks.py``) and makes the arrays contiguous.

GPU twin: ``npdiff/kernels/cuda/elementwise.py`` (the table's ``cuda`` column: the same
scalar pairs as CUDA device functions, one thread per element).
"""

from __future__ import annotations

import math
import types

import numpy as np
from numba import types as nbtypes
from numba.extending import overload

from ..backend import get_array_module, special
from .config import jit_scalar, jit_serial, parallel_for
from .vexp import exp_constants, exp_inplace, vexp

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
    """y[idx] = f(x[idx]) for every element; ``op`` in relu, sigmoid, silu, gelu, gelu_tanh
    (the formulas with libm's exp, erf, tanh: independent of the fast path's scalar pairs)."""
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
# fast CPU path (Numba): named scalar pairs, mapped by one parallel kernel factory
#
# Each activation is three scalar functions (minitorch's operators.py + fast_ops.tensor_map):
#   arg(x) ≤ 0      the argument of the one exponential it needs (None: it needs none),
#   f(x, e, one)    the value, with e = exp(arg(x)),
#   df(x, e, one)   the derivative ∂f/∂x, from the same e.
# ``one`` is 1 in the data's dtype (a Python literal would promote float32 arithmetic to
# float64). The map computes e with the vectorised exp (vexp.py; a libm call per element would
# cost 8x), inlined into the loop that applies f (or g·df), chunk by chunk of CHUNK elements
# (the tanh GELU: a chunk's e into a buffer first, ``_BUFFERED_EXP``). With e = e^{−|x|} ≤ 1, σ(x) = (1 if x ≥ 0 else e)/(1 + e), and the tanh GELU's
# ½(1 + tanh u) = σ(2u) from e = e^{−2|u|}: no exp ever overflows.


@jit_scalar
def neg_abs(v):
    """The exp argument of the σ-based ops: e = e^{−|x|}."""
    return -abs(v)


@jit_scalar
def relu(v, e, one):
    return v if v > 0 else 0.0


@jit_scalar
def relu_grad(v, e, one):
    return 1.0 if v > 0 else 0.0  # 0 at x = 0, as torch


@jit_scalar
def sigmoid(v, e, one):
    return (one if v >= 0 else e) / (one + e)  # σ(x), stable in both tails


@jit_scalar
def sigmoid_grad(v, e, one):
    s = sigmoid(v, e, one)
    return s * (one - s)  # σ(1 − σ)


@jit_scalar
def silu(v, e, one):
    return v * sigmoid(v, e, one)  # x σ(x)


@jit_scalar
def silu_grad(v, e, one):
    s = sigmoid(v, e, one)
    return s * (one + v * (one - s))  # σ(1 + x(1 − σ))


# Φ(x) = ½ erfc(−x/√2), not ½(1 + erf(x/√2)): for x ≪ 0 the latter cancels (1 + erf → 0)
# and keeps only erf's absolute accuracy, ~1e-3 relative at x = −4 in float32.
#
# float32 erfc without a libm call per element (libm's erfc does not vectorise; the exact GELU was
# 30x slower than torch's): for z = |x|/√2 ≥ 0,
#     erfc(z) = t·Q(t)·e^{−z²},   t = 1/(1 + z/2) ∈ (0, 1],
# Q(t) = erfcx(z)/t ∈ [0.28, 1] a degree-10 polynomial in t (ERFC_Q, fitted by
# benchmarks/erfc_fit.py: relative error 1.1e-8 in exact arithmetic, 2.8 float32 ε with Horner's
# rule in float32), and e^{−z²} = e^{−x²/2} from the map's vector exp (``neg_half_square``). That
# exponential's argument is exact: the exp takes −fl(x²)/2 and the scalars multiply by
# e^{−lo/2} ≈ 1 − lo/2, lo = x² − fl(x²) from Dekker's exact product (Veltkamp's split of x), so
# the relative error does not grow with x² in the tail. For x > 0, Φ = 1 − ½ erfc(z). float64
# (gradient checks) keeps libm's erfc and exp. docs/kernels.md, "The exact GELU".
ERFC_Q = (0.2820947947933293, 0.2820938530052558, 0.24688057770964345, 0.17537693215616648, 0.09299992922955343,
          -0.057229970245687656, 0.12708351916153765, -0.446968665613885, 0.48617099760937466, -0.23085375089456506,
          0.04235177239349292)
_Q0, _Q1, _Q2, _Q3, _Q4, _Q5, _Q6, _Q7, _Q8, _Q9, _Q10 = (np.float32(c) for c in ERFC_Q)
# |x| is clamped here before squaring: e^{−x²/2} is 0 in float32 beyond |x| ≈ 13.2, and the clamp
# keeps x² and Veltkamp's 4097·|x| finite (gelu(x) = x or −0 there, as with libm)
GELU_CLAMP = np.float32(16.0)
_HALF32, _TWO32, _SPLIT32 = np.float32(0.5), np.float32(2.0), np.float32(4097.0)  # 4097 = 2¹² + 1
_SQRT_HALF32 = np.float32(_SQRT_HALF)
_INV_SQRT_2PI32 = np.float32(_INV_SQRT_2PI)


@jit_scalar
def neg_half_square(v):
    """The exp argument of the exact GELU: e = e^{−x²/2} (|x| clamped at GELU_CLAMP)."""
    a = min(abs(v), GELU_CLAMP)
    return -(a * a) * _HALF32


def normal_cdf_pdf(v, e, one):
    """(Φ(x), φ(x)) from e = exp(neg_half_square(x)); one implementation per dtype (below)."""
    raise NotImplementedError("called from jitted code only")


@overload(normal_cdf_pdf, inline="always")
def _normal_cdf_pdf_typed(v, e, one):
    if one != nbtypes.float32:  # float64: libm (exact gradient checks; e is recomputed unclamped)
        def libm(v, e, one):
            return 0.5 * math.erfc(-v * 0.7071067811865476), math.exp(-0.5 * v * v) * 0.3989422804014327
        return libm

    def poly(v, e, one):
        a = min(abs(v), GELU_CLAMP)
        # e^{−a²/2} = e·e^{−lo/2}: lo = a² − fl(a²) exactly (Dekker), ah + al = a (Veltkamp)
        hi = a * a
        c = _SPLIT32 * a
        ah = c - (c - a)
        al = a - ah
        lo = ((ah * ah - hi) + _TWO32 * ah * al) + al * al
        gauss = e * (one - lo * _HALF32)
        t = one / (one + _HALF32 * (a * _SQRT_HALF32))  # t = 1/(1 + z/2), z = |x|/√2
        q = ((((((((((_Q10 * t + _Q9) * t + _Q8) * t + _Q7) * t + _Q6) * t + _Q5) * t + _Q4) * t + _Q3) * t
                + _Q2) * t + _Q1) * t + _Q0)
        tail = t * q * gauss * _HALF32  # ½ erfc(|x|/√2) = Φ(−|x|)
        return (tail if v < 0 else one - tail), gauss * _INV_SQRT_2PI32
    return poly


@jit_scalar
def gelu(v, e, one):
    # x Φ(x) = ½x erfc(−x/√2)
    cdf, pdf = normal_cdf_pdf(v, e, one)
    return v * cdf


@jit_scalar
def gelu_grad(v, e, one):
    # Φ(x) + x φ(x)
    cdf, pdf = normal_cdf_pdf(v, e, one)
    return cdf + v * pdf


@jit_scalar
def _tanh_u(v):
    return 0.7978845608028654 * (v + 0.044715 * v * v * v)  # u = √(2/π)(x + 0.044715x³)


@jit_scalar
def neg_abs_2u(v):
    """The exp argument of the tanh GELU: e = e^{−2|u|}."""
    return -abs(2 * _tanh_u(v))


# ½(1 + tanh u) = σ(2u) = (1 if u ≥ 0 else e)/(1 + e) with e = e^{−2|u|}, and
# 1 − tanh² u = 4e/(1 + e)²: written so, nothing cancels in the negative tail (1 + tanh u
# computed as a sum keeps only tanh's absolute accuracy: 30 % relative error at x = −5 in float32).
@jit_scalar
def gelu_tanh(v, e, one):
    # ½x(1 + tanh u)
    return v * (one if v >= 0 else e) / (one + e)


@jit_scalar
def gelu_tanh_grad(v, e, one):
    # ½(1 + tanh u) + ½x(1 − tanh² u)·u'(x)
    du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * v * v)
    return (one if v >= 0 else e) / (one + e) + 2.0 * v * e / ((one + e) * (one + e)) * du


# name -> (exp argument or None, f, df): the table of activations
ACTIVATIONS = {
    "relu": (None, relu, relu_grad),
    "sigmoid": (neg_abs, sigmoid, sigmoid_grad),
    "silu": (neg_abs, silu, silu_grad),
    "gelu": (neg_half_square, gelu, gelu_grad),
    "gelu_tanh": (neg_abs_2u, gelu_tanh, gelu_tanh_grad),
}


def _map_template(lo, hi, x, out, C, fast):
    """out[t] = f(x[t], e_t) over chunks [lo, hi) (parallel_for splits them), e_t by the vectorised exp.

    Each chunk is sliced first (``xc = x[a:a+m]``) and indexed from 0: an index ``a + i`` may be
    negative as far as Numba knows, and its wraparound test stops vectorisation (conv.py's note).
    """
    n = x.shape[0]
    one = C.one
    for c in range(lo, hi):
        a = c * CHUNK
        m = min(n, a + CHUNK) - a
        xc, oc = x[a : a + m], out[a : a + m]
        if USES_EXP and INLINE_EXP:  # noqa: F821 (bound by _specialise)
            for i in range(m):  # one pass: the exponential inlined (vexp), no buffer
                oc[i] = F(xc[i], vexp(ARG(xc[i]), C, fast), one)  # noqa: F821
        elif USES_EXP:  # noqa: F821
            buf = np.empty(m, x.dtype)
            ib = np.empty(m, np.int32)
            for i in range(m):
                buf[i] = ARG(xc[i])  # noqa: F821
            exp_inplace(buf, m, ib, ib.view(np.float32), C, fast)
            for i in range(m):
                oc[i] = F(xc[i], buf[i], one)  # noqa: F821
        else:
            for i in range(m):
                oc[i] = F(xc[i], one, one)  # noqa: F821 (no exp: e unused)


def _zip_template(lo, hi, g, x, out, C, fast):
    """out[t] = g[t]·df(x[t], e_t), the same chunks and exp as the map."""
    n = x.shape[0]
    one = C.one
    for c in range(lo, hi):
        a = c * CHUNK
        m = min(n, a + CHUNK) - a
        gc, xc, oc = g[a : a + m], x[a : a + m], out[a : a + m]
        if USES_EXP and INLINE_EXP:  # noqa: F821
            for i in range(m):
                oc[i] = gc[i] * F(xc[i], vexp(ARG(xc[i]), C, fast), one)  # noqa: F821
        elif USES_EXP:  # noqa: F821
            buf = np.empty(m, x.dtype)
            ib = np.empty(m, np.int32)
            for i in range(m):
                buf[i] = ARG(xc[i])  # noqa: F821
            exp_inplace(buf, m, ib, ib.view(np.float32), C, fast)
            for i in range(m):
                oc[i] = gc[i] * F(xc[i], buf[i], one)  # noqa: F821
        else:
            for i in range(m):
                oc[i] = gc[i] * F(xc[i], one, one)  # noqa: F821


# How the map gets e: inlined (``vexp`` in the same loop as f: one pass, no buffer; silu 0.96 → 0.53 ms
# forward, 1.31 → 0.69 ms backward on 2M float32, one thread) or, for the tanh GELU, a chunk's
# exponentials first into a buffer (``exp_inplace``): its argument and derivative are float64
# arithmetic (Python constants), and the one-pass loop measured slower (1.12 → 1.57 ms forward).
_BUFFERED_EXP = {"gelu_tanh"}


def _specialise(template, name, arg, f):
    """A parallel Numba kernel: ``template`` with ARG, F, USES_EXP, INLINE_EXP bound to this activation's scalars.

    A Python closure would do the same but Numba cannot cache closures to disk; a copy of the
    template's code with its own globals and its own name (the cache key) can be.
    """
    scope = dict(globals(), ARG=arg if arg is not None else neg_abs, F=f, USES_EXP=arg is not None,
                 INLINE_EXP=name.split("_", 1)[1] not in _BUFFERED_EXP)
    fn = types.FunctionType(template.__code__, scope, name)
    fn.__qualname__ = name
    fn.__doc__ = template.__doc__
    return jit_serial(fn)


# the kernels: MAPS[name] fills f(x), GRADS[name] fills g·f'(x) (flat contiguous arrays)
MAPS = {name: _specialise(_map_template, f"map_{name}", arg, f) for name, (arg, f, _) in ACTIVATIONS.items()}
GRADS = {name: _specialise(_zip_template, f"grad_{name}", arg, df) for name, (arg, _, df) in ACTIVATIONS.items()}


@jit_serial
def _softmax_forward_rows(lo, hi, x, out, log):
    """Rows of x (R, C): m = max, s = Σ e^{x−m}; out = e^{x−m}/s or x − m − log s."""
    R, C = x.shape
    for r in range(lo, hi):  # parallel_for's share of [0, R)
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


@jit_serial
def _softmax_backward_rows(lo, hi, g, y, out, log):
    """softmax: out = y(g − Σ g y); log_softmax: out = g − e^{y} Σ g (rows of (R, C))."""
    R, C = g.shape
    for r in range(lo, hi):  # parallel_for's share of [0, R)
        acc = 0.0
        for j in range(C):
            acc += g[r, j] if log else g[r, j] * y[r, j]
        for j in range(C):
            if log:
                out[r, j] = g[r, j] - math.exp(y[r, j]) * acc
            else:
                out[r, j] = y[r, j] * (g[r, j] - acc)


@jit_serial
def _squared_error(lo, hi, x, t, out, partial):
    """out[i] = (x[i] − t[i])²; partial[c] = Σ over chunk c (one slot per chunk: no race)."""
    n = x.shape[0]
    for c in range(lo, hi):  # parallel_for's share of [0, (n + CHUNK - 1) // CHUNK)
        s = 0.0
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            d = x[i] - t[i]
            out[i] = d * d
            s += d * d
        partial[c] = s


@jit_serial
def _scale_diff(lo, hi, x, t, g, scale, out):
    """out[i] = scale·(x[i] − t[i])·g[i]  (g has one element when broadcast)."""
    n = x.shape[0]
    one = g.shape[0] == 1
    for c in range(lo, hi):  # parallel_for's share of [0, (n + CHUNK - 1) // CHUNK)
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            out[i] = scale * (x[i] - t[i]) * (g[0] if one else g[i])


@jit_serial
def _masked_scale(lo, hi, x, mask, scale, out):
    """out[i] = x[i]·mask[i]·scale (dropout forward and backward)."""
    n = x.shape[0]
    for c in range(lo, hi):  # parallel_for's share of [0, (n + CHUNK - 1) // CHUNK)
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            out[i] = x[i] * scale if mask[i] else 0


# ---------------------------------------------------------------------------
# xp-generic vectorised versions (numpy or cupy)


def _sigmoid_xp(xp, x):
    e = xp.exp(-xp.abs(x))  # ≤ 1: never overflows
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _tanh_u_xp(x):
    return _SQRT_2_OVER_PI * (x + _GELU_C * x**3)  # u = √(2/π)(x + 0.044715x³)


def _gelu_tanh_grad_xp(xp, x):
    u = _tanh_u_xp(x)
    s, s_neg = _sigmoid_xp(xp, 2 * u), _sigmoid_xp(xp, -2 * u)  # ½(1 + tanh u), ½(1 − tanh u)
    # ½(1 + tanh u) + ½x(1 − tanh² u)u'(x), with 1 − tanh² u = 4σ(2u)σ(−2u)
    return s + 2 * x * s * s_neg * _SQRT_2_OVER_PI * (1 + 3 * _GELU_C * x * x)


# name -> (f(xp, x), f'(xp, x)) as array expressions
_XP = {
    "relu": (lambda xp, x: xp.maximum(x, 0), lambda xp, x: (x > 0).astype(x.dtype)),
    "sigmoid": (_sigmoid_xp, lambda xp, x: _sigmoid_xp(xp, x) * (1 - _sigmoid_xp(xp, x))),
    "silu": (lambda xp, x: x * _sigmoid_xp(xp, x),
             lambda xp, x: _sigmoid_xp(xp, x) * (1 + x * (1 - _sigmoid_xp(xp, x)))),
    # the stable forms of the numba column: Φ = ½ erfc(−x/√2), ½(1 + tanh u) = σ(2u)
    "gelu": (lambda xp, x: 0.5 * x * special(xp).erfc(-x * _SQRT_HALF),
             lambda xp, x: 0.5 * special(xp).erfc(-x * _SQRT_HALF) + x * xp.exp(-0.5 * x * x) * _INV_SQRT_2PI),
    "gelu_tanh": (lambda xp, x: x * _sigmoid_xp(xp, 2 * _tanh_u_xp(x)), _gelu_tanh_grad_xp),
}


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


def dropout_forward_xp(x, mask, p):
    scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
    return (x * mask * scale).astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------
# the columns of the kernel table (arguments arrive checked and C-contiguous)


def _chunks(n):
    """The number of CHUNK-element chunks of a flat array of n elements (the units parallel_for splits)."""
    return -(-n // CHUNK)


def activation_columns(name):
    """{column: (forward(x), backward(g, x))} of activation ``name`` for the kernel table."""
    fast_map, fast_grad = MAPS[name], GRADS[name]
    f_xp, df_xp = _XP[name]

    def forward_numba(x):
        out = np.empty(x.shape, x.dtype)
        parallel_for(fast_map, _chunks(x.size), x.reshape(-1), out.reshape(-1), exp_constants(x.dtype),
                     x.dtype == np.float32)
        return out

    def backward_numba(g, x):
        out = np.empty(x.shape, x.dtype)
        parallel_for(fast_grad, _chunks(x.size), g.reshape(-1), x.reshape(-1), out.reshape(-1),
                     exp_constants(x.dtype), x.dtype == np.float32)
        return out

    def forward_xp(x):
        return f_xp(get_array_module(x), x).astype(x.dtype, copy=False)

    def backward_xp(g, x):
        return (g * df_xp(get_array_module(x), x)).astype(x.dtype, copy=False)

    return dict(reference=(lambda x: unary_forward_reference(name, x), lambda g, x: unary_backward_reference(name, g, x)),
                numba=(forward_numba, backward_numba), xp=(forward_xp, backward_xp))


def _rows(a, dim, dtype=None):
    am = np.moveaxis(a, dim, -1)  # (..., C)
    return np.ascontiguousarray(am, dtype=dtype).reshape(-1, am.shape[-1]), am.shape  # (R, C)


def softmax_forward_numba(x, dim, log=False):
    """Softmax (or log-softmax) along ``dim``, max-subtracted: rows moved last, rows split over threads."""
    rows, shape = _rows(x, dim)
    out = np.empty_like(rows)
    if rows.size:
        parallel_for(_softmax_forward_rows, rows.shape[0], rows, out, log)
    return np.moveaxis(out.reshape(shape), -1, dim)


def softmax_backward_numba(g, y, dim, log=False):
    """Gradient of softmax / log-softmax from the saved output ``y``."""
    gr, shape = _rows(g, dim, y.dtype)
    yr, _ = _rows(y, dim)
    out = np.empty_like(yr)
    if yr.size:
        parallel_for(_softmax_backward_rows, yr.shape[0], gr, yr, out, log)
    return np.moveaxis(out.reshape(shape), -1, dim)


def mse_loss_forward_numba(x, t, reduction="mean"):
    """Squared error (x − t)², reduced by "mean", "sum" or "none"; per-chunk float64 partial sums."""
    e = np.empty(x.shape, x.dtype)
    partial = np.zeros(max(1, _chunks(x.size)), np.float64)
    parallel_for(_squared_error, _chunks(x.size), x.reshape(-1), t.reshape(-1), e.reshape(-1), partial)
    if reduction == "none":
        return e
    total = partial.sum()
    return np.asarray(total / x.size if reduction == "mean" else total, dtype=x.dtype)


def mse_loss_backward_numba(g, x, t, reduction="mean"):
    """(gx, gt) = (2(x − t)g/n, −gx) for "mean"; without /n for "sum"; g elementwise for "none"."""
    k = 2.0 / x.size if reduction == "mean" else 2.0
    gx = np.empty(x.shape, x.dtype)
    parallel_for(_scale_diff, _chunks(x.size), x.reshape(-1), t.reshape(-1), g.reshape(-1), x.dtype.type(k),
                 gx.reshape(-1))
    return gx, -gx


def dropout_forward_numba(x, mask, p):
    """x·mask/(1 − p) — the forward, and (applied to g) the backward; p = 1 gives zeros."""
    scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
    out = np.empty(x.shape, x.dtype)
    parallel_for(_masked_scale, _chunks(x.size), x.reshape(-1), mask.reshape(-1), x.dtype.type(scale), out.reshape(-1))
    return out


def dropout_mask(shape, p, generator=None, xp=np):
    """Keep-mask for dropout: True with probability 1 − p (drawn from ``generator``)."""
    from ..backend import default_generator

    rng = default_generator() if generator is None else generator
    keep = rng.random(shape) >= p
    return keep if xp is np else xp.asarray(keep)
