"""A cold start in two processes: a helper compiles the Winograd F(4×4, 3×3) driver and the backward
kernels a UNet step reaches last, while the training process compiles the rest.

The first training step on a fresh machine compiles every kernel the step uses, one after the other: about
13 s of CPU (``benchmarks/cold_start.py --breakdown``), of which winograd4's driver
(``winograd4._winograd4_chunks``, one function for the convolution and its weight gradient) is the largest
single part, 5-6 s. One process cannot compile two functions at once (Numba's global compiler lock; its
Python-level passes hold the GIL), but two processes can, and Numba's on-disk cache (``cache=True``,
config.py) carries the compiled code from one to the other.

``start`` (called by the trainer) launches ``python -m npdiff.kernels.precompile DTYPE``, which
1. calls ``winograd4_conv3x3`` and ``winograd4_weight_grad`` on a tiny image: this compiles the driver for
   the same argument types as any 3×3 convolution of that dtype (both modes are one signature) and writes it
   to the cache; then prints one line (``READY``);
2. compiles, through the same numba-column functions the models' ops call, backward kernels that a UNet
   step reaches late (``compile_backward_tail``: group norm + SiLU, nearest upsampling, SiLU), and exits.
The training process meanwhile builds its model and runs its first step, compiling its kernels as it meets
them. ``wait``, called by winograd4's two entry points, blocks until the helper's line (at once when it has
come), so the driver is loaded from the cache instead of compiled a second time; rather than idle until
then, it compiles kernels the step meets later and the helper does not (``_FILL``: attention's forward,
the im2col convolution's backward, attention's backward), checking for the line between them. By the time
the step reaches the tail kernels, the helper has usually cached them. A kernel the helper has not finished is simply compiled by
the step as well (the work is done twice, the result is the same), and if the helper fails or takes longer
than ``WAIT_S``, the step compiles the driver itself, as without a helper.

Nothing is started when the on-disk cache is off (``NPDIFF_NUMBA_CACHE=0``), when the driver is already
cached for this machine or loaded in this process (a warm start pays nothing but reading one index), when
several MPI ranks share the node (they compile side by side already), with ``NPDIFF_PRECOMPILE=0``, and, by
default (``auto``), when no core is free for the helper (``core_free``: on a machine kept busy by other work
the second process measured slower than one); ``NPDIFF_PRECOMPILE=1`` starts it regardless.

The shared cache: Numba writes each index and data file to a temporary name and renames it into place (atomic
on POSIX), so a reader never sees half a file; two processes compiling the same function at once can only
cost one of the two cache entries (compiled again next time), never a wrong one. Nothing is left running:
at interpreter exit a helper still compiling is waited for (at most ``WAIT_S``), then killed.

Measured with ``benchmarks/cold_start.py``: docs/kernels.md, Cold start.
"""

from __future__ import annotations

import atexit
import os
import select
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import config

WAIT_S = 120.0  # the longest wait for the helper before compiling here (it takes 5-6 s on an idle core)

_HELPER = []  # [(subprocess.Popen, its stderr file)] from ``start`` until ``finish``
_DRIVER = []  # [True] once the helper has said that the driver is in the cache
WAITED_S = [0.0]  # seconds this process spent in ``wait`` (benchmarks/cold_start.py reports them)
# CPU seconds (each process's own clock, from its start) at the helper's start, at the end of the wait and in
# the helper at its line: benchmarks/cold_start.py's estimate of an idle machine's wall time from them
CPU = {}
READY = "driver compiled"  # the helper's one line on stdout (and its CPU seconds so far)
_DTYPE = [np.dtype(np.float32)]  # the helper's dtype


def driver_cached() -> bool:
    """Whether winograd4's driver is loaded in this process or listed in Numba's cache index for this
    machine (the index is Numba's own: keys (signature, target machine, code hash); an index whose source
    file changed reads as empty). Errors reading it count as cached: then nothing is started."""
    from .winograd4 import _winograd4_chunks as driver

    if driver.signatures:
        return True
    try:
        index = driver._cache._cache_file._load_index()
        machine = driver.targetctx.codegen().magic_tuple()
        return any(key[1] == machine for key in index)
    except Exception:  # noqa: BLE001 - a Numba without these internals: behave as without the helper
        return True


def core_free() -> bool:
    """Whether this machine has a core for the helper: two or more cores for this process, and a 1-minute load
    average at least half a core below their count. On a machine whose cores other work keeps busy, a second
    process only adds its own start and the kernels both compile (measured: docs/kernels.md, Cold start)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return cores >= 2 and os.getloadavg()[0] < cores - 0.5


def start(dtype=np.float32) -> bool:
    """Start the helper that compiles winograd4's driver for ``dtype`` into the on-disk cache, then the backward
    kernels a UNet step reaches late (module docstring), unless one has run already or there is nothing to
    gain: ``config.PRECOMPILE`` "0", or "auto" (the default) without a free core (``core_free``); the on-disk
    cache off; several MPI ranks on this node; the driver cached already. Returns whether one was started."""
    if _HELPER or _DRIVER or config.PRECOMPILE == "0" or not config.CACHE or config.ranks_on_this_node() > 1:
        return False
    if (config.PRECOMPILE != "1" and not core_free()) or driver_cached():
        return False
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this npdiff's folder
    env = dict(os.environ, NPDIFF_NUMBA_PARALLEL="0", NPDIFF_PRECOMPILE="0",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    log = tempfile.TemporaryFile()  # the helper's messages, shown if it fails (a pipe could fill and stall it)
    _DTYPE[:] = [np.dtype(dtype)]
    CPU["start"] = time.process_time()
    _HELPER.append((subprocess.Popen([sys.executable, "-m", "npdiff.kernels.precompile", np.dtype(dtype).name],
                                     env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log), log))
    return True


def wait(timeout: float = WAIT_S) -> bool:
    """Block until the helper has compiled the driver (at once without a helper, or once it has said so).
    Returns whether the driver came from the helper; after ``timeout`` seconds, or if the helper stops
    without saying so, the caller goes on (and compiles the driver itself)."""
    if _DRIVER or not _HELPER:
        return bool(_DRIVER)
    proc = _HELPER[0][0]
    t0 = time.perf_counter()
    for fill in _FILL:  # rather than idle, compile kernels the step needs after this point, until the line comes
        if select.select([proc.stdout], [], [], 0.0)[0]:
            break
        try:
            fill(_DTYPE[0])
        except Exception as error:  # noqa: BLE001 - a head start only: the step compiles what it needs anyway
            print(f"npdiff: precompile.{fill.__name__} failed ({error!r}); the step compiles it", file=sys.stderr)
    _FILL.clear()
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().decode(errors="replace").split() if ready else []
    WAITED_S[0] += time.perf_counter() - t0
    CPU["wait_end"] = time.process_time()
    if line[:2] == READY.split():
        CPU["helper_ready"] = float(line[2])
        _DRIVER.append(True)
        return True
    finish(0.0)  # stopped or too slow: report, and compile here
    return False


def finish(timeout: float = WAIT_S) -> bool:
    """Wait for the helper to exit (at most ``timeout`` seconds, then kill it) and report a failure.
    Called at interpreter exit: a helper still running may be writing the cache. Returns whether it
    succeeded (False without one)."""
    if not _HELPER:
        return False
    proc, log = _HELPER.pop()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()
    log.seek(0)
    message = log.read().decode(errors="replace")
    log.close()
    if proc.returncode != 0:
        print(f"npdiff: the kernel compile helper (npdiff/kernels/precompile.py) stopped with code "
              f"{proc.returncode}{': ' + message if message else ''}", file=sys.stderr)
    return proc.returncode == 0


atexit.register(finish)


def compile_driver(dtype) -> None:
    """One tiny convolution and its weight gradient (4×4 output, 16 channels): they compile the driver for
    ``dtype``'s C-contiguous arrays, as any 3×3 convolution of that dtype would."""
    from .winograd4 import weight_transform, winograd4_conv3x3, winograd4_weight_grad

    x = np.zeros((1, 16, 4, 4), dtype)
    w = np.zeros((16, 16, 3, 3), dtype)
    winograd4_conv3x3(x, weight_transform(w), np.zeros(16, dtype), (1, 1), np.empty((1, 16, 4, 4), dtype))
    winograd4_weight_grad(x, np.zeros((1, 16, 4, 4), dtype), (1, 1))


def compile_backward_tail(dtype) -> None:
    """Backward kernels a UNet training step reaches late, in the order it reaches them, through the same
    numba-column functions the models' ops call, on tiny arrays: group norm (+ SiLU), nearest upsampling,
    SiLU. The argument types depend on the dtype and these paths only, not on the sizes."""
    from . import elementwise, norm, pooling

    rng = np.random.default_rng(0)

    def a(*shape):
        return rng.standard_normal(shape).astype(dtype)

    stats = np.zeros((2, 4), dtype), np.ones((2, 4), dtype)  # the forward's mean and 1/σ per (n, group)
    norm.group_norm_silu_backward_numba(a(2, 8, 4, 4), a(2, 8, 4, 4), *stats, 4, a(8), a(8))
    pooling.interpolate_backward_numba(a(1, 2, 8, 8), (1, 2, 4, 4), "nearest", False, (2.0, 2.0))
    elementwise.activation_columns("silu")["numba"][1](a(64), a(64))


def _attention_forward(dtype) -> None:
    """The forward kernel of attention with heads wider than ``attention.SMALL_HEAD_DIM`` (the BLAS one)."""
    from . import attention

    d = 2 * attention.SMALL_HEAD_DIM
    q = np.zeros((2, 8, d), dtype)
    attention.attention_forward_numba(q, q, q, scale=d ** -0.5)


def _im2col_conv_backward(dtype) -> None:
    """Both gradients of a convolution on the im2col path (a stride-2 3×3 one: downsampling), whose forward
    the run has compiled by then (its first convolution, from 3 channels)."""
    from . import conv

    x, w = np.zeros((2, 4, 8, 8), dtype), np.zeros((4, 4, 3, 3), dtype)
    conv.conv2d_backward_numba(x, w, np.zeros((2, 4, 4, 4), dtype), (2, 2), (1, 1), 1, True, True, True)


def _attention_backward(dtype) -> None:
    """The backward kernel of attention with heads wider than ``attention.SMALL_HEAD_DIM`` (the BLAS one)."""
    from . import attention

    d = 2 * attention.SMALL_HEAD_DIM
    q = np.ones((2, 8, d), dtype)
    lse = np.ones((2, 8), dtype)  # a stand-in for the forward's log-sum-exp
    attention.attention_backward_numba(q, q, q, q, q, lse, scale=d ** -0.5)


# What ``wait`` compiles in the training process while the helper is still on the driver (at most one of
# them after the helper's line has come): kernels a UNet step meets after its first 3×3 convolution, soonest
# first, which the helper does not compile. (Measured: with attention's backward in the helper's tail
# instead, the step reached it first and compiled it too; ``benchmarks/cold_start.py``'s idle estimate
# 10.9 s against 9.9 s.)
_FILL = [_attention_forward, _im2col_conv_backward, _attention_backward]


if __name__ == "__main__":
    compile_driver(np.dtype(sys.argv[1]))
    print(READY, time.process_time(), flush=True)  # the parent's ``wait`` returns here
    compile_backward_tail(np.dtype(sys.argv[1]))
