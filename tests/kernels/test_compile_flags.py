"""Every Numba function of the kernels is compiled with config.py's flags, and cached on disk.

A kernel written with a bare ``@numba.njit`` would compile on every run (no ``cache=True``) or
with other flags than the tests assume (``fastmath``); the cold start (benchmarks/cold_start.py)
relies on every kernel loading from the cache after the first run. And none is a parfor
(``parallel=True``) kernel: ``config.parallel_for`` is the one way to use several cores.
"""

import importlib

import pytest
from numba.core.caching import FunctionCache
from numba.core.registry import CPUDispatcher

from npdiff.kernels import config

FAMILIES = ("attention", "conv", "elementwise", "gemm", "microgemm", "norm", "pooling", "vexp", "winograd", "winograd4")


def _dispatchers():
    """(name, dispatcher) of every jitted function defined in the kernel families, factory-made ones too."""
    found = {}
    for family in FAMILIES:
        module = importlib.import_module(f"npdiff.kernels.{family}")
        for name, value in vars(module).items():
            values = value.values() if isinstance(value, dict) else [value]
            for v in values:
                if isinstance(v, CPUDispatcher) and v.py_func.__module__ == module.__name__:
                    found[f"{family}.{v.py_func.__name__}"] = v
    return sorted(found.items())


def test_the_walk_finds_the_kernels():
    """Every family contributes (module functions, and elementwise's factory-made maps in dicts)."""
    names = [name for name, _ in _dispatchers()]
    assert {name.split(".")[0] for name in names} == set(FAMILIES)
    assert any(name.startswith("elementwise.map_") for name in names)
    assert len(names) >= 40


@pytest.mark.skipif(not config.CACHE, reason="NPDIFF_NUMBA_CACHE=0 turns the on-disk cache off")
@pytest.mark.parametrize("name,dispatcher", _dispatchers(), ids=[n for n, _ in _dispatchers()])
def test_kernel_uses_the_config_flags(name, dispatcher):
    assert isinstance(dispatcher._cache, FunctionCache), f"{name} is not cached on disk (cache=True)"
    options = dispatcher.targetoptions
    # the documented exceptions: the row reductions (``jit_reduce``) may reassociate their sums, and the
    # register-blocked GEMM and attention's row exponential (``jit_contract``) may fuse their multiply-adds
    allowed = ((config.FASTMATH, config.REDUCE_FASTMATH) if name.startswith("norm._row_") or name == "attention._row_sum_prefix" else
               (config.FASTMATH, config.CONTRACT_FASTMATH) if name.startswith("microgemm.") or name == "attention._exp_shift_row_clamped"
               else (config.FASTMATH,))
    assert options.get("fastmath", False) in allowed, f"{name}: fastmath differs from config.FASTMATH"
    assert options.get("error_model") == config.ERROR_MODEL, f"{name}: error_model differs from config"
    assert options.get("nogil"), f"{name} holds the GIL"
    # one way to use several cores, config.parallel_for over a serial kernel: no parfor (prange) kernels,
    # whose build costs 2-3x the compile time of the same loop (config.py)
    assert not options.get("parallel"), f"{name} is a parallel (prange) kernel; use config.parallel_for"
