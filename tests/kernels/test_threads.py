"""config.parallel_for: the thread split every parallel kernel runs on."""

import numpy as np
import numba
import pytest

from npdiff.kernels import config


@config.jit_serial
def _mark(lo, hi, out, calls):
    """out[r] += 1 for r in [lo, hi); calls[lo] = hi (which ranges ran)."""
    for r in range(lo, hi):
        out[r] += 1
    calls[lo] = hi


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [1, 2, 3, 17])
def test_ranges_cover_every_item_once_in_contiguous_runs(threads, n):
    old = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        T = numba.get_num_threads()
        out, calls = np.zeros(n, np.int64), np.full(n + 1, -1, np.int64)
        config.parallel_for(_mark, n, out, calls)
    finally:
        numba.set_num_threads(old)
    assert (out == 1).all()  # every item exactly once
    starts = np.flatnonzero(calls >= 0)
    assert starts[0] == 0 and all(calls[a] == b for a, b in zip(starts, list(starts[1:]) + [n]))  # contiguous
    assert len(starts) == min(n, T)  # one range per thread


def test_an_error_in_a_worker_reaches_the_caller():
    def boom(lo, hi):
        if lo > 0:
            raise ValueError(f"range {lo}-{hi}")

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one thread: no worker")
    old = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        with pytest.raises(ValueError, match="range 1-2"):
            config.parallel_for(boom, 2)
    finally:
        numba.set_num_threads(old)


def test_freed_large_blocks_are_reused_without_page_faults():
    """config keeps glibc's freed blocks (mmap threshold 32 MB, trim threshold 1 GB): allocating,
    filling and freeing four 16 MB arrays again and again — what every training step does with its
    activations — faults no pages back in (10,220 faults over the 5 rounds with NPDIFF_MALLOC_TUNE=0:
    the 64 MB freed at the heap's top went back to the kernel each round)."""
    resource = pytest.importorskip("resource", reason="page-fault counts need the resource module (POSIX)")
    if not config.MALLOC_TUNED:
        pytest.skip("not glibc, or NPDIFF_MALLOC_TUNE=0: malloc thresholds left alone")

    def step():
        arrays = [np.ones(4 << 20, np.float32) for _ in range(4)]  # 4 × 16 MB, written in full
        del arrays

    step()
    step()  # warm up: the heap grows once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 500, f"{faults} minor page faults over 5 rounds of reused 16 MB blocks"
