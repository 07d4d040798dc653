"""A vectorisable exponential for Numba kernels (float32), shared by the kernel families.

Numba has no SIMD exp without Intel's SVML, so a loop calling ``math.exp`` runs one
scalar libm call per element (~10 ns) — eight times slower than numpy's own vector exp.
``exp_inplace`` is branch-free straight-line arithmetic that LLVM vectorises:

    exp(y) = 2^k · p(r),  k = round(y·log₂e),  r = y − k·ln2 (Cody–Waite: ln2 split hi + lo),
    p(r) = Σ_{j≤7} r^j / j!   (|r| ≤ ln2/2, so the relative error is below 1e-7)

and 2^k is assembled from its IEEE bit pattern. Arguments must be ≤ 0 (every caller
passes x − max or −|x|); y < −87 gives 0, as does y = −∞. In float64 (gradient checks)
it falls back to ``math.exp``.

Two forms. ``exp_inplace`` maps a buffer (two loops: the polynomial, storing 2^k's bits in an
int32 scratch, then the product with that scratch viewed as float32). ``vexp`` is the same
arithmetic for one element, to be inlined into a caller's own loop so that the shift before it
and the sum after it run in the same pass (attention's softmax: one pass over a score tile
instead of four); it reinterprets the bits in a register with ``float32_from_bits``, an LLVM
``bitcast`` (numba has no scalar view), which vectorises like any other instruction.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .config import jit_helper, jit_inline


class ExpConstants(NamedTuple):
    """Constants of the vector exp, in the data's dtype (numba would promote a Python float
    literal to float64 and lose the float32 vector width). Numba passes a NamedTuple to a
    kernel by value and reads its fields by name."""

    log2e: float  # log₂ e
    ln2_hi: float  # ln 2 = ln2_hi + ln2_lo (Cody–Waite split: k·ln2_hi is exact)
    ln2_lo: float
    cut: float  # below this exp underflows to 0
    magic: float  # 1.5·2²³: adding and subtracting it rounds a float32 to the nearest integer
    two23: float  # 2²³, the shift of the exponent field
    bias: float  # 127, the exponent bias
    zero: float
    one: float
    c2: float  # 1/k! for k = 2..7: the Taylor coefficients
    c3: float
    c4: float
    c5: float
    c6: float
    c7: float


@functools.lru_cache(maxsize=None)
def _exp_constants(dtype: np.dtype) -> ExpConstants:
    t = dtype.type
    return ExpConstants(*(t(c) for c in (1.4426950408889634, 0.693359375, -2.12194440e-4, -87.0, 12582912.0,
                                          8388608.0, 127.0, 0.0, 1.0, 1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720, 1 / 5040)))


def exp_constants(dtype) -> ExpConstants:
    """The ``ExpConstants`` in ``dtype`` (built once per dtype: 15 scalar conversions cost ~20 µs a call,
    paid by every call of the kernels that take them)."""
    return _exp_constants(np.dtype(dtype))


@jit_helper
def exp_inplace(x, n, ib, fb, C, fast):
    """x[t] = exp(x[t]) for t < n, in place (arguments must be ≤ 0); C: ``ExpConstants`` of x's dtype.

    fast (float32): exp(y) = 2^k · p(r), k = round(y·log2 e), r = y − k·ln2, p = Taylor to r⁷
    (|r| ≤ ln2/2 so the error is < 1e-7 relative); 2^k is built from its bit pattern in the
    int32 buffer ``ib`` viewed as float32 ``fb``. y < −87 gives 0 (as does y = −∞).
    """
    if not fast:
        for t in range(n):
            x[t] = math.exp(x[t])
        return
    for t in range(n):
        y = x[t]
        yc = y if y > C.cut else C.cut
        kf = (yc * C.log2e + C.magic) - C.magic  # k = round(y·log2 e)
        r = yc - kf * C.ln2_hi - kf * C.ln2_lo  # r = y − k·ln2
        p = ((((((C.c7 * r + C.c6) * r + C.c5) * r + C.c4) * r + C.c3) * r + C.c2) * r + C.one) * r + C.one
        ib[t] = np.int32((kf + C.bias) * C.two23)  # the bit pattern of 2^k
        x[t] = p if y > C.cut else C.zero
    for t in range(n):
        x[t] = x[t] * fb[t]



@intrinsic
def float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bit pattern is the int32 ``bits`` (C's memcpy / numpy's ``.view``,
    for one value in a register): an LLVM ``bitcast``, no instruction of its own after
    vectorisation."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@jit_inline
def vexp(y, C, fast):
    """exp(y) for one y ≤ 0 (``exp_inplace``'s arithmetic, inlined into the caller's loop).

    fast (float32): 2^k · p(r) as in ``exp_inplace``, 2^k = float32_from_bits((k + 127)·2²³);
    y ≤ −87 gives 0 (y = −∞ too). Otherwise ``math.exp`` (float64: exact gradient checks)."""
    if not fast:
        return math.exp(y)
    yf = np.float32(y)  # a float64 argument (a Python float slipped in) would break the rounding trick below
    yc = yf if yf > C.cut else C.cut
    kf = (yc * C.log2e + C.magic) - C.magic  # k = round(y·log2 e)
    r = yc - kf * C.ln2_hi - kf * C.ln2_lo  # r = y − k·ln2
    p = ((((((C.c7 * r + C.c6) * r + C.c5) * r + C.c4) * r + C.c3) * r + C.c2) * r + C.one) * r + C.one
    two_k = float32_from_bits(np.int32((kf + C.bias) * C.two23))
    return p * two_k if yf > C.cut else C.zero
