"""Numba flags and the thread policy, set in one place.

Every jitted kernel in ``npdiff/kernels`` is decorated with ``jit_serial`` (one thread, GIL
released: ``nogil=True``); the helpers they call with ``jit_inline`` or ``jit_helper`` (which
compile less; see below). Kernels that use several cores are serial functions over a range
``[lo, hi)`` of independent work items (rows, planes, chunks), run by ``parallel_for`` on a
small pool of Python threads, one contiguous range per thread. ``fastmath`` stays off: the
fast kernels are tested against the reference ones to tight tolerances, and reassociation
would change sums in ways a test cannot predict. ``cache=True`` stores compiled code next to
the source so that only the first run on a machine pays compilation.

Why not Numba's ``prange`` (``parallel=True``)? Compile time. A parfor kernel is compiled
and optimised as a serial body, a gufunc and a driver; measured on the conv kernels, that is
2-3x the compile time of the same loop as a serial function (3.0 s vs 1.4 s CPU for the conv
forward), and with every family parallel the first ``npdiff train`` on a fresh machine spent
about 30 s of CPU compiling before its first step (15 s with ``parallel_for``, Winograd and the
fused group norm included; ``benchmarks/cold_start.py``). At run time the two are the same static split; waking a
pool thread costs tens of microseconds, against kernels of hundreds of microseconds and up.
No kernel uses ``prange`` any more (the group-norm kernels were the last: moving them off it took
their family's compilation from 2.7-3.1 to 1.2-1.3 s of CPU; ``norm.py``), so there is no parallel decorator here:
``parallel_for`` is the one way to use several cores. One thing a parfor body had for free: the
arrays inside it carry no reference count. In a serial kernel, a view made in the loop (``a[r]``
passed to a helper, an array assigned to a local) takes and drops a reference on the array's
memory record, atomically, and all threads share that record; pass (array, index) to helpers
instead (``norm.py``'s row helpers).

Thread pools: numpy's sgemm runs on OpenBLAS's own pool. npdiff parallelises with its own
threads only and keeps BLAS on one thread (set process-wide when this module is imported).
Multi-threaded OpenBLAS barriers collapse when the cores are busy: measured on this 2-core
machine with another process running, a (64×512)·(512×128) sgemm took 24 ms on 2 OpenBLAS
threads and 0.09 ms on one. Large GEMMs are split over npdiff's threads instead
(``gemm.matmul``), each thread calling single-threaded BLAS on its rows.
``blas_single_thread()`` also holds BLAS to one thread inside a kernel when the user has
raised the global limit. The thread count is Numba's (``numba.set_num_threads``, the CLI's
``--threads``, ``NUMBA_NUM_THREADS``). Should anything start Numba's OpenMP pool, its idle
threads are asked to sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE`` unless set).

Several processes on one machine (``mpiexec -n N``, ``srun``; see training/distributed.py):
each would start a pool of one thread per core, N·cores threads fighting over the cores.
Unless ``NUMBA_NUM_THREADS`` is set, a process started by an MPI launcher gets
cores ÷ (its ranks on this node), at least 1 (``threads_per_rank``), set before Numba
reads it; a rank the launcher already bound to fewer cores (``--bind-to``, srun's
``--cpus-per-task``) gets the cores it was bound to.

Memory: a training step allocates and frees the same large activations every step. glibc's
malloc serves big blocks by mmap and returns freed memory at the top of its heap to the kernel,
so every step faulted its activations back in, page by page, zeroed by the kernel: about 11,000
minor page faults per digits16 training step (some 45 MB), and in a benchmark loop of group norm on
(64, 64, 32, 32) about 1,500 per call or none, depending on what the process had allocated before
(the "swings between runs" of issue 16). ``_keep_freed_memory`` raises glibc's mmap threshold to its
maximum (32 MB) and its trim threshold to 1 GB at import, so freed blocks are reused: a few faults
per step after the first, resident memory flat at the step's peak.

Environment overrides (read once at import):
  NPDIFF_NUMBA_CACHE=0     disable the on-disk cache
  NPDIFF_NUMBA_PARALLEL=0  run parallel_for on one thread
  NPDIFF_BLAS_THREADS=n    leave BLAS at n threads instead of 1 (0: do not touch it)
  NPDIFF_MALLOC_TUNE=0     leave glibc's malloc thresholds alone
  NPDIFF_PRECOMPILE=0      compile everything in the training process (no helper process; precompile.py);
                           1: always start the helper on a cold cache; auto (default): when a core is free
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
PRECOMPILE = os.environ.get("NPDIFF_PRECOMPILE", "auto")  # a cold training run's helper process (precompile.py)
FASTMATH = False

# error_model="numpy": a float division by zero gives ±inf / nan as in numpy instead of raising
# ZeroDivisionError. Python's model puts a zero test before every division, and that branch
# stops LLVM from vectorising any loop that divides: the loop of ``x / (1 + e)`` compiled to
# scalar code only; with this model the fused GroupNorm + SiLU forward went from 2.9 to 1.8 ms
# on (64, 128, 16, 16), one thread. Kernels test their own denominators where zero is possible
# (a fully masked attention row, an empty pooling window). Numba's cache does not notice a
# change of these flags: clear ``__pycache__/*.nbi, *.nbc`` after editing them.
ERROR_MODEL = "numpy"

jit_serial = numba.njit(cache=CACHE, fastmath=FASTMATH, nogil=True, error_model=ERROR_MODEL)
# Helpers of kernels (functions called only from other jitted functions) and what they cost to
# compile. A jitted callee is compiled on its own (its own LLVM module, optimised and turned into
# machine code, plus wrappers) and then its optimised module is linked into every caller's module,
# which LLVM optimises and compiles again as a whole: a helper costs its own compile and a share of
# each caller's. Two ways to pay less, neither changing the arithmetic:
#
# jit_inline: inlined into the caller at Numba's IR level (``inline="always"``) before typing, so it
# is compiled only as part of the caller. For helpers with one call site (Winograd's transforms)
# and small ones (index arithmetic): a body inlined at several sites is typed at each (inside the
# former ``prange`` loops of group norm it also went through the parfor passes: 1.3 s more CPU). Also the scalar functions mapped by a kernel factory (``jit_scalar``): inlined into
# the caller's loop, the loop sees straight-line arithmetic and vectorises as if it were written there.
#
# jit_helper: compiled on its own, without the Python and C entry points (``no_cpython_wrapper``,
# ``no_cfunc_wrapper``) that only a call from Python or through a C pointer needs; such a helper
# cannot be called from Python (call its caller, or ``.py_func`` for the plain function).
#
# Measured by ``benchmarks/cold_start.py --breakdown``: the default run's first step took 18.0 s of CPU
# with every helper a plain jit_serial function and 15.9-16.0 s with these two (medians of 9 and 11 runs
# at load 6-10; Winograd's inlined transforms are most of the gain); kernel speed unchanged within noise
# (docs/kernels.md, Cold start).
jit_inline = numba.njit(cache=CACHE, fastmath=FASTMATH, nogil=True, inline="always", error_model=ERROR_MODEL)
jit_scalar = jit_inline
jit_helper = numba.njit(cache=CACHE, fastmath=FASTMATH, nogil=True, error_model=ERROR_MODEL,
                        no_cpython_wrapper=True, no_cfunc_wrapper=True)

# Row reductions (Σ v, Σ (v − μ)², Σ g(v − μ) in norm.py) with one fast-math freedom, ``reassoc``:
# LLVM may split the sum into vector partial sums and add them at the end, as a hand-written lanes
# array would, but keeps them in registers. Measured on 8,192 rows of 256 float32, float64
# accumulators, one thread: 0.19 ms, against 0.84 ms for 32 lanes kept in a scratch array (the
# lanes form's loads and stores of the scratch, per block, were the cost). No other flag (no nnan,
# ninf, arcp, contract): only the order of the additions changes, and with it the rounding, within
# the bound of a blocked sum, (n / lanes + log₂ lanes)·eps·Σ|terms|; the order depends on the
# machine's vector width (AVX2 or AVX-512), not on the run. Kernels' helpers, so without the
# Python and C entry points, as ``jit_helper``.
REDUCE_FASTMATH = {"reassoc"}
jit_reduce = numba.njit(cache=CACHE, fastmath=REDUCE_FASTMATH, nogil=True, error_model=ERROR_MODEL,
                        no_cpython_wrapper=True, no_cfunc_wrapper=True)

# The register-blocked GEMM (microgemm.py) with one fast-math freedom, ``contract``: a·b + c computed as
# one fused multiply-add, rounded once instead of twice (what every BLAS kernel does), so a sum's error
# bound is at most the unfused one's. Without it LLVM emits a multiply and an add: 113 against 142
# GFLOP/s on 384 × 32 @ 32 × 64 (one thread, AVX-512). Helpers of kernels, as ``jit_helper``.
CONTRACT_FASTMATH = {"contract"}
jit_contract = numba.njit(cache=CACHE, fastmath=CONTRACT_FASTMATH, nogil=True, error_model=ERROR_MODEL,
                          no_cpython_wrapper=True, no_cfunc_wrapper=True)


def num_threads() -> int:
    return numba.get_num_threads()


_EXECUTOR = []


def parallel_for(kernel, n, *args):
    """Run ``kernel(lo, hi, *args)`` over [0, n) cut into ``num_threads()`` contiguous ranges, one per thread.

    The kernel is a serial, GIL-free Numba function (``jit_serial``: ``nogil=True``) that loops
    ``for r in range(lo, hi)``; the ranges run at once on a small pool of Python threads, the
    calling thread taking the first. This replaces Numba's ``prange``: a parallel (parfor)
    kernel compiles its body two to three times over (serial body, gufunc, driver; measured
    2-3x the compile time of the same loop serial), which made the first training step on a
    fresh machine spend most of its ~45 s compiling. Ranges are static and disjoint, so a
    kernel that writes only the rows it owns has no races; exceptions reach the caller.
    """
    T = min(num_threads() if PARALLEL else 1, n)
    if T <= 1:
        kernel(0, n, *args)
        return
    if not _EXECUTOR or _EXECUTOR[0][0] != os.getpid():  # first use, or a forked child (no threads there)
        from concurrent.futures import ThreadPoolExecutor

        _EXECUTOR[:] = [(os.getpid(), ThreadPoolExecutor(max_workers=max(1, numba.config.NUMBA_NUM_THREADS - 1),
                                                         thread_name_prefix="npdiff-kernel"))]
    pool = _EXECUTOR[0][1]
    cuts = [t * n // T for t in range(T + 1)]
    futures = [pool.submit(kernel, cuts[t], cuts[t + 1], *args) for t in range(1, T)]
    try:
        kernel(cuts[0], cuts[1], *args)
    finally:
        for f in futures:
            f.result()


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


# glibc mallopt parameters (malloc.h): M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 1 << 30


def _keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks up to MMAP_THRESHOLD in its heap and to return the
    heap's free top to the kernel only beyond TRIM_THRESHOLD (module docstring). False where there
    is no glibc (macOS, musl) or it is switched off."""
    if os.environ.get("NPDIFF_MALLOC_TUNE", "1") == "0":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False


MALLOC_TUNED = _keep_freed_memory()
