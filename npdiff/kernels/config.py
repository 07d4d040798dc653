"""Numba flags, set in one place.

Every jitted kernel in ``npdiff/kernels`` is decorated with ``jit_serial`` (one
thread; the inner loop of a parallel driver) or ``jit_parallel`` (uses
``numba.prange``). ``fastmath`` stays off: the fast kernels are tested against
the reference ones to tight tolerances, and reassociation would change sums in
ways a test cannot predict. ``cache=True`` stores compiled code next to the
source so that only the first run on a machine pays compilation.

Environment overrides (read once at import):
  NPDIFF_NUMBA_CACHE=0     disable the on-disk cache
  NPDIFF_NUMBA_PARALLEL=0  compile ``jit_parallel`` kernels serially
"""

from __future__ import annotations

import os

import numba

CACHE = os.environ.get("NPDIFF_NUMBA_CACHE", "1") != "0"
PARALLEL = os.environ.get("NPDIFF_NUMBA_PARALLEL", "1") != "0"
FASTMATH = False

jit_serial = numba.njit(cache=CACHE, fastmath=FASTMATH, nogil=True)
jit_parallel = numba.njit(cache=CACHE, fastmath=FASTMATH, parallel=PARALLEL, nogil=True)
prange = numba.prange


def num_threads() -> int:
    return numba.get_num_threads()
