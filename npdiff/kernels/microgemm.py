"""Register-blocked GEMM for the small products of Winograd's points: our own loops, compiled for the host.

Shapes: a (R, K) — or (K, R) with ``trans_a`` —, b (K, J), out (R, J), all C-contiguous, one dtype.
Definition: out[r, j] (+)= Σ_k op(a)[r, k] · b[k, j], op(a) = a or aᵀ; with ``accumulate`` the products are
added to out, otherwise they replace it.

Why not BLAS. F(4×4, 3×3) does 36 GEMMs per chunk of tiles whose inner or outer dimensions are the channel
counts, 32 to 128 in the UNets (``winograd4.py``): V[ξ] (tiles × C) @ U[ξ] (C × O), and for the weight
gradient GM[ξ]ᵀ (O × tiles) @ V[ξ] (tiles × C). On such narrow operands a BLAS sgemm spends its time in
packing and edge kernels, and it runs whatever kernel its own CPU detection picked: numpy's and scipy's
OpenBLAS follow ``OPENBLAS_CORETYPE`` (this project's environment sets Haswell, AVX2, on an AVX-512
machine), so they run at most half the vector width Numba compiles for. These loops have no packing: the
operands are already laid out for them (channels last, contiguous), and LLVM compiles them for the host
(``numba`` targets the host CPU).

The loop, per block of ROWS rows of out by LANES columns:

    acc (ROWS × LANES) = out block (accumulate) or 0
    for k:  b_k = b[k, j0 : j0 + LANES]                       (LANES / vector width loads)
            acc[i, :] += op(a)[r0 + i, k] · b_k,  i < ROWS   (ROWS broadcasts, ROWS·LANES/width FMAs)
    out block = acc

acc is a fixed-size array on the stack (``_stack_block``, an ``alloca``), indexed only with constants
after LLVM unrolls the lane loop, so it lives in vector registers: 4 × 32 float32 is 8 AVX-512 registers
(16 AVX2 ones), and each k costs 2 loads of b, 4 broadcasts and 8 FMAs — enough independent FMAs to fill
both pipes. The row loop is written out by hand (4 rows): left as a loop, LLVM vectorised it across rows
with gathers and scatters (4 GFLOP/s, against 226 written out; blocks of 4 × 16, 8 × 16, 8 × 32 and
4 × 64 measured 154, 122, 141 and 157 GFLOP/s on 384 × 32 @ 32 × 64, one thread, AVX-512; OpenBLAS's
AVX2 sgemm 111, its AVX-512 sgemm about 185). Rows and columns past the last whole block (R % ROWS,
J % LANES) go through the plain loop, out row by row in memory (``_gemm_edge``).

When. Against OpenBLAS's AVX-512 kernels these loops measured 0.8-1.2× its time (one thread, the
Winograd parts of the UNets' shapes): no gain. Against its AVX2 kernels on the same AVX-512 machine,
0.5-0.8× (``docs/kernels.md``). So the rule (``beats_blas``): these loops where the host has AVX-512
(what Numba compiles them for) and the BLAS that Numba's ``np.dot`` calls runs a narrower kernel (an
OpenBLAS core type without AVX-512, as ``threadpoolctl`` reports it); BLAS everywhere else, including
AVX2-only hosts, where 4 × 32 accumulators fill all 16 registers (compiled for Haswell: 80-84 GFLOP/s
against OpenBLAS's Haswell kernels' 115-130). ``NPDIFF_MICROGEMM=0|1`` forces it
(0: off everywhere).
And only where out has at least LANES columns (``winograd4.own_gemm_pays``): narrower, everything goes
through the edge loop (16 channels: twice BLAS's time).

Rounding. Each output is Σ_k in k order, one fused multiply-add per term (``config.jit_contract``: the
``contract`` fast-math flag, nothing else): one rounding per term instead of two, so the error bound of
the sum is at most the unfused one's, K·ε·Σ|a||b|.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from numba import carray, types
from numba.core import cgutils
from numba.extending import intrinsic

from .config import jit_contract, jit_inline, jit_serial

ROWS, LANES = 4, 32  # the register block: rows of out by columns of out (the vector lanes)
WIDE_OPENBLAS = ("skylakex", "cooperlake", "sapphirerapids")  # OpenBLAS core types with AVX-512 kernels


@functools.lru_cache(maxsize=None)
def host_has_avx512() -> bool:
    """Numba compiles these loops for a CPU with AVX-512 (the host, unless NUMBA_CPU_NAME names another);
    False with ``NPDIFF_MICROGEMM=0`` (these loops off everywhere)."""
    import llvmlite.binding as llvm
    import numba

    if os.environ.get("NPDIFF_MICROGEMM", "") == "0":
        return False

    if numba.config.CPU_NAME not in (None, "host") and not numba.config.CPU_FEATURES:  # another target: no guess
        return False
    features = numba.config.CPU_FEATURES or llvm.get_host_cpu_features().flatten()
    return "+avx512f" in features.split(",")


@functools.lru_cache(maxsize=None)
def beats_blas() -> bool:
    """True where these loops replace BLAS (module docstring): the host has AVX-512 and every BLAS loaded
    is an OpenBLAS running a core type without it. ``NPDIFF_MICROGEMM=0|1`` overrides."""
    forced = os.environ.get("NPDIFF_MICROGEMM", "")
    if forced in ("0", "1"):
        return forced == "1"
    if not host_has_avx512():
        return False
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (Numba's np.dot calls scipy's BLAS: load it first)
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return False
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return bool(blas) and all(i.get("internal_api") == "openblas" and
                              str(i.get("architecture", "")).lower() not in WIDE_OPENBLAS for i in blas)


@intrinsic
def _stack_block(typingctx, dtype):
    """A pointer to ROWS·LANES uninitialised elements of ``dtype`` on the stack (an alloca in the function's
    entry block: LLVM's SROA turns its constant-indexed elements into registers)."""
    def codegen(context, builder, signature, args):
        ty = context.get_value_type(dtype.dtype)
        return cgutils.alloca_once(builder, ty, size=context.get_constant(types.intp, ROWS * LANES))
    return types.CPointer(dtype.dtype)(dtype), codegen


@jit_inline
def _gemm_edge(a, b, out, trans_a, accumulate, r0, r1, j0):
    """out[r, j0:] (+)= Σ_k op(a)[r, k] b[k, j0:] for rows [r0, r1): the plain loop, out's row in memory."""
    K, J = b.shape
    for r in range(r0, r1):
        dst = out[r, j0:]
        if not accumulate:
            dst[:] = 0
        for k in range(K):
            ak = a[k, r] if trans_a else a[r, k]
            src = b[k, j0:]
            for j in range(J - j0):
                dst[j] += ak * src[j]


@jit_contract
def gemm(a, b, out, trans_a, accumulate):
    """out (R, J) (+)= op(a) @ b, a (R, K) or, with ``trans_a``, (K, R); b (K, J) (module docstring).

    Call it with ``trans_a`` and ``accumulate`` computed at run time, not written as constants: a constant
    argument makes Numba compile a separate specialisation for that literal value (compile time)."""
    K, J = b.shape
    R = out.shape[0]
    acc = carray(_stack_block(out.dtype), (ROWS, LANES))
    r_full, j_full = R - R % ROWS, J - J % LANES
    for r0 in range(0, r_full, ROWS):
        for j0 in range(0, j_full, LANES):
            if accumulate:
                for i in range(ROWS):
                    src = out[r0 + i, j0 : j0 + LANES]
                    for j in range(LANES):
                        acc[i, j] = src[j]
            else:
                acc[:] = 0
            for k in range(K):
                bk = b[k, j0 : j0 + LANES]
                if trans_a:
                    a0, a1, a2, a3 = a[k, r0], a[k, r0 + 1], a[k, r0 + 2], a[k, r0 + 3]
                else:
                    a0, a1, a2, a3 = a[r0, k], a[r0 + 1, k], a[r0 + 2, k], a[r0 + 3, k]
                # plain form: acc[i, j] += op(a)[r0 + i, k] · b[k, j0 + j], i < ROWS (written out: see above)
                for j in range(LANES):
                    acc[0, j] += a0 * bk[j]
                    acc[1, j] += a1 * bk[j]
                    acc[2, j] += a2 * bk[j]
                    acc[3, j] += a3 * bk[j]
            for i in range(ROWS):
                dst = out[r0 + i, j0 : j0 + LANES]
                for j in range(LANES):
                    dst[j] = acc[i, j]
        if j_full < J:
            _gemm_edge(a, b, out, trans_a, accumulate, r0, r0 + ROWS, j_full)
    if r_full < R:
        _gemm_edge(a, b, out, trans_a, accumulate, r_full, R, 0)


@jit_serial
def _gemm_py(a, b, out, trans_a, accumulate):
    gemm(a, b, out, trans_a, accumulate)


def matmul_blocked(a, b, out, trans_a=False, accumulate=False):
    """``gemm`` called from Python (tests, benchmarks); returns out."""
    _gemm_py(a, b, out, trans_a, accumulate)
    return out
