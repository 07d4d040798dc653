"""Every GPU kernel of the cuda column compiles to PTX (NVRTC, compute capability 9.0).

The CUDA simulator does not type-check (it runs the Python code of each thread), so this is
where a kernel that only the real compiler would reject fails — without a GPU: NVRTC ships in
``numba-cuda[cu12]`` (the ``cuda-sim`` extra). Kernels are registered with their argument
kinds in ``npdiff/kernels/cuda/common.py`` and compiled for float32 and float64.
"""

import importlib
import importlib.util
import types

import numpy as np
import pytest

CC = (9, 0)  # Hopper; what a real compile on an H100 targets
FAMILIES = ("conv", "norm", "attention", "pooling", "elementwise", "gemm")


def _registry():
    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("numba-cuda is not installed (pip install -e '.[cuda-sim]')")
    from npdiff.kernels.cuda import common

    if common.SIMULATOR:
        pytest.skip("NUMBA_ENABLE_CUDASIM=1: the simulator has no compiler")
    from numba import cuda

    try:
        cuda.compile_ptx(lambda a: None, "void(float32[:])", cc=(9, 0))
    except Exception as e:  # no NVRTC library
        pytest.skip(f"NVRTC is not available (pip install 'numba-cuda[cu12]'): {type(e).__name__}: {e}")
    for family in FAMILIES:  # import the files and build the per-dtype kernels
        mod = importlib.import_module(f"npdiff.kernels.cuda.{family}")
        for factory in ("_kernels", "_gemm"):
            if hasattr(mod, factory):
                for dtype in (np.float32, np.float64):
                    getattr(mod, factory)(np.dtype(dtype))
    return common, cuda


def test_every_family_registers_kernels():
    common, _ = _registry()
    families = {name.split(".")[0] for name, *_ in common.KERNELS}
    assert families == set(FAMILIES) | {"common"}, families


def test_every_kernel_compiles_to_ptx(monkeypatch):
    common, cuda = _registry()
    # A device function called from a kernel is compiled for the *current* device's compute
    # capability, which asks the driver; there is none here, so name the one we compile for.
    import numba.cuda.dispatcher as dispatcher

    monkeypatch.setattr(dispatcher, "get_current_device", lambda: types.SimpleNamespace(compute_capability=CC))
    failed = []
    for name, fn, kinds, dtype in common.KERNELS:
        for dt in [dtype] if dtype is not None else [np.float32, np.float64]:
            try:
                ptx, _ = cuda.compile_ptx(fn, common.signature(kinds, dt), cc=CC)
                assert ".entry" in ptx
            except Exception as e:
                failed.append(f"{name} [{np.dtype(dt)}]: {type(e).__name__}: {str(e)[:400]}")
    assert not failed, "\n".join(failed)
