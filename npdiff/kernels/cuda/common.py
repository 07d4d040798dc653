"""What every GPU kernel family shares: launch sizes, the kernel registry, block reductions.

Vocabulary of Numba's CUDA target (one line each, for a reader coming from the CPU files):
  * a *kernel* (``@cuda.jit``) runs once per thread; threads come in *blocks* (up to 1024,
    here ``TILE×TILE`` = 256 or ``BLOCK`` = 256) and blocks in a *grid*;
  * ``cuda.threadIdx`` / ``cuda.blockIdx`` / ``cuda.blockDim`` locate a thread;
  * ``cuda.shared.array`` is memory shared by the threads of one block (fast, ~48 KiB),
    ``cuda.syncthreads()`` waits until every thread of the block reached it;
  * ``cuda.local.array`` is a thread's own small fixed-size scratch (registers or L1).

Arrays: on a GPU the kernels take CuPy arrays through ``__cuda_array_interface__`` (no
copies); under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` set before the first
``import numba``) they take numpy arrays and every thread is a Python thread — the tests'
way of running the GPU column on a machine without a GPU. The simulator does not type-check
(a real compile does: ``tests/kernels/test_cuda_ptx.py`` compiles every kernel registered
here to PTX with NVRTC).

Kernels whose shared-memory tiles hold the data's own dtype are made per dtype by a small
cached factory (``cuda.shared.array`` needs its dtype at compile time); reductions
accumulate in float64 whatever the dtype, as the CPU kernels do.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import cuda

from ...backend import get_array_module

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)
# GEMM tiles: TILE×TILE threads per block, TILE×TILE values per shared tile. The simulator
# uses 8×8 tiles: fewer idle (Python) threads on the tests' tiny shapes, and the walk over
# several reduction steps is exercised on more of them (``NPDIFF_CUDA_TILE`` overrides).
TILE = int(os.environ.get("NPDIFF_CUDA_TILE", 8 if SIMULATOR else 16))
BLOCK = 256  # threads of a 1-D block (elementwise maps, block reductions)
# Under the simulator each thread is a Python thread (~0.1–0.5 ms each): reductions over
# tiny sets launch as few threads as the set needs. On a GPU a block is at least a warp.
_MIN_THREADS = 1 if SIMULATOR else 32


def threads_for(n):
    """Threads of a 1-D reduction block for a set of n elements: a power of two in [warp, BLOCK]."""
    t = _MIN_THREADS
    while t < min(n, BLOCK):
        t *= 2
    return t


def launch(kern, n, *args):
    """Run a one-thread-per-item kernel over n items (``cuda.grid(1)`` < n does the work)."""
    t = threads_for(n)
    kern[blocks(n, t), t](*args)


def blocks(n, per):
    """Number of blocks of ``per`` threads that cover n items (at least 1)."""
    return max(1, -(-n // per))


def xp_of(a):
    """numpy (under the simulator, or host input) or cupy: where the outputs are allocated."""
    return get_array_module(a)


def numba_type(dtype):
    return numba.from_dtype(np.dtype(dtype))


# -- the registry of kernels, for the PTX compile check -------------------------------------
#
# Each kernel is declared with its argument kinds, a space-separated string:
#   A1..A4  C-order array of the data dtype with that many dimensions,
#   D1..D3  float64 array,  I1..I3  int64 array,  M1  bool array,
#   t       a scalar of the data dtype,  f  float64,  i  int64,  b  bool.
# ``tests/kernels/test_cuda_ptx.py`` compiles every registered kernel for float32 and float64
# (a factory kernel for its own dtype).

KERNELS = []  # (name, python function, kinds, dtype or None)


def kernel(kinds, dtype=None):
    """``cuda.jit`` plus registration of the argument kinds for the PTX check."""

    def wrap(fn):
        KERNELS.append((f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}", fn, kinds, dtype))
        return cuda.jit(fn)

    return wrap


def signature(kinds, dtype):
    """The numba argument types of a kinds string for data of ``dtype``."""
    t = numba_type(dtype)
    base = {"A": t, "D": numba.float64, "I": numba.int64, "M": numba.boolean}
    scalars = {"t": t, "f": numba.float64, "i": numba.int64, "b": numba.boolean}
    out = []
    for k in kinds.split():
        if k in scalars:
            out.append(scalars[k])
        else:
            out.append(numba.types.Array(base[k[0]], int(k[1]), "C"))
    return tuple(out)


# -- block reductions -----------------------------------------------------------------------


@cuda.jit(device=True)
def block_sum(buf, value):
    """Σ of ``value`` over the threads of a 1-D block whose size is a power of two.

    Each thread writes its value to ``buf`` (shared, ≥ blockDim.x float64), then a tree:
    at step s, thread t < s adds buf[t + s] to buf[t]; log2(blockDim) steps, one barrier
    each. Every thread gets the total. (Warp shuffles would skip the last five steps' barriers
    on a GPU; the simulator does not model shuffles, so the plain tree is used.)
    """
    t = cuda.threadIdx.x
    buf[t] = value
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if t < s:
            buf[t] += buf[t + s]
        cuda.syncthreads()
        s //= 2
    total = buf[0]
    cuda.syncthreads()  # buf may be reused right after
    return total


@kernel("A3 A1")
def channel_sum(a, out):
    """out[c] = Σ_{n, s} a[n, c, s]: one block per channel c, threads stride over (n, s).

    Shapes: a (N, C, S) -> out (C,). Used for bias gradients (conv: a = g as (N, O, Ho·Wo);
    linear: g as (M, N, 1)).
    """
    buf = cuda.shared.array(BLOCK, numba.float64)
    c = cuda.blockIdx.x
    N, _, S = a.shape
    acc = 0.0
    for e in range(cuda.threadIdx.x, N * S, cuda.blockDim.x):
        acc += a[e // S, c, e % S]
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        out[c] = total


def sum_channels(a3):
    """Σ over axes 0 and 2 of a (N, C, S) array, on the device that holds it -> (C,)."""
    out = xp_of(a3).empty(a3.shape[1], a3.dtype)
    channel_sum[a3.shape[1], threads_for(a3.shape[0] * a3.shape[2])](a3, out)
    return out
