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

One pool: npdiff parallelises with Numba's threads only and keeps BLAS on one
thread (set process-wide when this module is imported). Multi-threaded OpenBLAS
barriers collapse when the cores are busy: measured on this 2-core machine with
another process running, a (64×512)·(512×128) sgemm took 24 ms on 2 OpenBLAS
threads and 0.09 ms on one. Large GEMMs are split over Numba threads instead
(``gemm.matmul``), each thread calling single-threaded BLAS on its rows.
``blas_single_thread()`` also holds BLAS to one thread inside a kernel when the
user has raised the global limit.

Several processes on one machine (``mpiexec -n N``, ``srun``; see training/distributed.py):
each would start a pool of one thread per core, N·cores threads fighting over the cores.
Unless ``NUMBA_NUM_THREADS`` is set, a process started by an MPI launcher gets
cores ÷ (its ranks on this node), at least 1 (``threads_per_rank``), set before Numba
reads it; a rank the launcher already bound to fewer cores (``--bind-to``, srun's
``--cpus-per-task``) gets the cores it was bound to.

Environment overrides (read once at import):
  NPDIFF_NUMBA_CACHE=0     disable the on-disk cache
  NPDIFF_NUMBA_PARALLEL=0  compile ``jit_parallel`` kernels serially
  NPDIFF_BLAS_THREADS=n    leave BLAS at n threads instead of 1 (0: do not touch it)
"""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def ranks_on_this_node() -> int:
    """How many processes an MPI launcher started on this node (1 without a launcher).

    MPICH/Hydra: MPI_LOCALNRANKS; Open MPI: OMPI_COMM_WORLD_LOCAL_SIZE; MVAPICH:
    MV2_COMM_WORLD_LOCAL_SIZE; Slurm's srun: SLURM_STEP_TASKS_PER_NODE (e.g. "2(x3),1")
    at index SLURM_NODEID."""
    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return max(1, int(value))
    spec, node = os.environ.get("SLURM_STEP_TASKS_PER_NODE", ""), os.environ.get("SLURM_NODEID", "0")
    if spec and node.isdigit():
        counts = []
        for part in spec.split(","):
            count, _, repeat = part.partition("(x")
            if count.isdigit():
                counts += [int(count)] * (int(repeat.rstrip(")")) if repeat.rstrip(")").isdigit() else 1)
        if int(node) < len(counts):
            return max(1, counts[int(node)])
    return 1


def threads_per_rank(local_ranks: int) -> int:
    """Numba threads for one of ``local_ranks`` processes on this node: its bound cores if the
    launcher bound it to fewer than all, else cores // local_ranks, at least 1."""
    cores = os.cpu_count() or 1
    try:
        bound = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        bound = cores
    if bound < cores:
        return max(1, bound)
    return max(1, cores // max(1, local_ranks))


if "NUMBA_NUM_THREADS" not in os.environ and ranks_on_this_node() > 1:
    os.environ["NUMBA_NUM_THREADS"] = str(threads_per_rank(ranks_on_this_node()))

import numba  # noqa: E402

CACHE = os.environ.get("NPDIFF_NUMBA_CACHE", "1") != "0"
PARALLEL = os.environ.get("NPDIFF_NUMBA_PARALLEL", "1") != "0"
FASTMATH = False

jit_serial = numba.njit(cache=CACHE, fastmath=FASTMATH, nogil=True)
jit_parallel = numba.njit(cache=CACHE, fastmath=FASTMATH, parallel=PARALLEL, nogil=True)
# scalar functions mapped by a kernel factory: inlined into the caller's loop (Numba IR level),
# so the loop sees straight-line arithmetic and vectorises as if it were written there
jit_scalar = numba.njit(cache=CACHE, fastmath=FASTMATH, nogil=True, inline="always")
prange = numba.prange


def num_threads() -> int:
    return numba.get_num_threads()


_POOLS = []


def blas_single_thread():
    """Context manager: BLAS (numpy's and scipy's, which Numba's ``np.dot`` calls) on one thread.

    A no-op when threadpoolctl is missing. The pool list is built on first use,
    after scipy's cython BLAS is loaded, so that its OpenBLAS is limited too.
    """
    if not _POOLS:
        try:
            import scipy.linalg.cython_blas  # noqa: F401  (load it before listing pools)
            from threadpoolctl import ThreadpoolController

            _POOLS.append(ThreadpoolController())
        except Exception:  # pragma: no cover - threadpoolctl ships with scikit-learn
            _POOLS.append(None)
    pools = _POOLS[0]
    return pools.limit(limits=1, user_api="blas") if pools is not None else contextlib.nullcontext()


BLAS_THREADS = int(os.environ.get("NPDIFF_BLAS_THREADS", "1"))


def _limit_blas_globally():
    if BLAS_THREADS <= 0:
        return
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (Numba's np.dot calls scipy's BLAS: load it first)
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=BLAS_THREADS, user_api="blas")
    except Exception:  # pragma: no cover - threadpoolctl ships with scikit-learn
        pass


_limit_blas_globally()
