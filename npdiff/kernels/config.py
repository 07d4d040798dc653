"""Numba flags, set in one place.

Every jitted kernel in ``npdiff/kernels`` is decorated with ``jit_serial`` (one
thread; the inner loop of a parallel driver) or ``jit_parallel`` (uses
``numba.prange``). ``fastmath`` stays off: the fast kernels are tested against
the reference ones to tight tolerances, and reassociation would change sums in
ways a test cannot predict. ``cache=True`` stores compiled code next to the
source so that only the first run on a machine pays compilation.

Thread pools: Numba's prange runs on an OpenMP pool while numpy's sgemm runs on
OpenBLAS's own pool. OpenMP's default wait policy leaves finished threads
spinning, which steals the cores OpenBLAS needs right after (tens of ms per
hand-over on 2 cores), so unless the user chose otherwise we ask OpenMP to
sleep idle threads (``OMP_WAIT_POLICY=PASSIVE``; read when the pool starts).

Environment overrides (read once at import):
  NPDIFF_NUMBA_CACHE=0     disable the on-disk cache
  NPDIFF_NUMBA_PARALLEL=0  compile ``jit_parallel`` kernels serially
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402

CACHE = os.environ.get("NPDIFF_NUMBA_CACHE", "1") != "0"
PARALLEL = os.environ.get("NPDIFF_NUMBA_PARALLEL", "1") != "0"
FASTMATH = False

jit_serial = numba.njit(cache=CACHE, fastmath=FASTMATH, nogil=True)
jit_parallel = numba.njit(cache=CACHE, fastmath=FASTMATH, parallel=PARALLEL, nogil=True)
prange = numba.prange


def num_threads() -> int:
    return numba.get_num_threads()
