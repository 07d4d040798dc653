"""benchmarks/cold_start.py's compile profile: what Numba compiled, with which signatures, for how long.

The timing itself is never asserted (see benchmarks/); this checks the bookkeeping: every compile
is listed under its function with its argument types, and a caller's seconds exclude those of the
callee it compiled on the way (so the column adds up to the total once).
"""

import importlib.util
import os
import time

import numba
import numpy as np
from numba.core import event

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cold_start():
    spec = importlib.util.spec_from_file_location("cold_start", os.path.join(ROOT, "benchmarks", "cold_start.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@numba.njit(cache=False)
def _inner(x):
    return x * 2


@numba.njit(cache=False)
def _outer(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += _inner(x[i])
    return s


def test_profile_lists_each_compile_with_exclusive_seconds():
    profile = _cold_start().compile_profile()
    try:
        t0 = time.process_time()
        assert _outer(np.arange(4, dtype=np.float64)) == 12.0
        assert _outer(np.arange(4, dtype=np.float32)[::2]) == 4.0  # a second signature: float32, layout A
        total = time.process_time() - t0
    finally:
        event.unregister("numba:compile", profile)
    assert not profile.stack  # every start met its end
    outer = profile.records[f"{__name__}._outer"]
    inner = profile.records[f"{__name__}._inner"]
    assert outer["signatures"] == ["(array(float64, 1d, C))", "(array(float32, 1d, A))"]
    assert inner["signatures"] == ["(float64)", "(float32)"]
    spent = sum(r["cpu_s"] for r in profile.records.values())
    assert all(r["cpu_s"] > 0 and r["wall_s"] > 0 for r in (outer, inner))
    # exclusive times: the listed seconds add up to at most the CPU time the compiles took in all
    assert spent <= total + 0.01
