"""A vectorisable exponential for Numba kernels (float32), shared by the kernel families.

Numba has no SIMD exp without Intel's SVML, so a loop calling ``math.exp`` runs one
scalar libm call per element (~10 ns) — eight times slower than numpy's own vector exp.
``exp_inplace`` is branch-free straight-line arithmetic that LLVM vectorises:

    exp(y) = 2^k · p(r),  k = round(y·log₂e),  r = y − k·ln2 (Cody–Waite: ln2 split hi + lo),
    p(r) = Σ_{j≤7} r^j / j!   (|r| ≤ ln2/2, so the relative error is below 1e-7)

and 2^k is assembled from its IEEE bit pattern. Arguments must be ≤ 0 (every caller
passes x − max or −|x|); y < −87 gives 0, as does y = −∞. In float64 (gradient checks)
it falls back to ``math.exp``.
"""

from __future__ import annotations

import math

import numpy as np

from .config import jit_serial


def exp_constants(dtype):
    """Constants of the vector exp, in the data's dtype (numba would promote a Python float
    literal to float64 and lose the float32 vector width): log2(e), ln2 split hi/lo
    (Cody–Waite), underflow cut, 1.5·2²³ (adding and subtracting it rounds a float32 to the
    nearest integer without a libm call, so the loop vectorises), 2²³, 127, 0, 1, then 1/k!
    for k = 2..7."""
    return np.array(
        [1.4426950408889634, 0.693359375, -2.12194440e-4, -87.0, 12582912.0, 8388608.0, 127.0, 0.0, 1.0,
         1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720, 1 / 5040],
        dtype=dtype,
    )


@jit_serial
def exp_inplace(x, n, ib, fb, C, fast):
    """x[t] = exp(x[t]) for t < n, in place (arguments must be ≤ 0).

    fast (float32): exp(y) = 2^k · p(r), k = round(y·log2 e), r = y − k·ln2, p = Taylor to r⁷
    (|r| ≤ ln2/2 so the error is < 1e-7 relative); 2^k is built from its bit pattern in the
    int32 buffer ``ib`` viewed as float32 ``fb``. y < −87 gives 0 (as does y = −∞).
    """
    if not fast:
        for t in range(n):
            x[t] = math.exp(x[t])
        return
    log2e, hi, lo2, cut, magic, two23, b127, zero, one = C[0], C[1], C[2], C[3], C[4], C[5], C[6], C[7], C[8]
    c2, c3, c4, c5, c6, c7 = C[9], C[10], C[11], C[12], C[13], C[14]
    for t in range(n):
        y = x[t]
        yc = y if y > cut else cut
        kf = (yc * log2e + magic) - magic  # round(y·log2 e)
        r = yc - kf * hi - kf * lo2
        p = ((((((c7 * r + c6) * r + c5) * r + c4) * r + c3) * r + c2) * r + one) * r + one
        ib[t] = np.int32((kf + b127) * two23)
        x[t] = p if y > cut else zero
    for t in range(n):
        x[t] = x[t] * fb[t]

