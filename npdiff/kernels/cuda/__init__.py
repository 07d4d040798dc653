"""The ``cuda`` column of the kernel table: npdiff's GPU kernels, written with Numba's CUDA target.

One file per kernel family, mirroring the CPU files one level up (``conv.py`` ↔ ``cuda/conv.py``
…); ``common.py`` holds what they share (launch sizes, block reductions, the kernel registry).
Each function ``<op>_cuda`` has the signature of the op's other columns and returns arrays of
the input's array module: cupy arrays on a GPU, numpy arrays under the CUDA simulator.

Nothing here is imported with npdiff: ``numba-cuda`` is optional (``pip install
"npdiff[gpu]"``), and the simulator has to be chosen (``NUMBA_ENABLE_CUDASIM=1``) before the
first ``import numba``, so the table registers each cuda column as a thin wrapper
(``column``) that imports its family file the first time it is called.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys

from ... import backend


def column(family: str, name: str):
    """The table's ``cuda`` entry for ``cuda/<family>.py``'s ``name``: imported on first call."""

    def run(*args):
        fn = getattr(importlib.import_module(f"{__name__}.{family}"), name)
        with _simulator_thread_switching():
            if not any(isinstance(a, backend.SimulatedDeviceArray) for a in args):
                return fn(*args)  # cupy arrays on a GPU, numpy arrays under the simulator (the kernel tests)
            # arrays of the simulated device: the simulator's kernels run on their numpy memory, and
            # what they return (allocated by the family's ``xp_of``, numpy here) stays on the device
            return backend.as_device_arrays(fn(*[backend.device_memory(a) for a in args]))

    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"cuda column: npdiff/kernels/cuda/{family}.py:{name} (imported on first call)"
    return run


# Under the simulator every GPU thread of a block is a Python thread, and the launcher waits for
# them by polling in a loop (numba_cuda/numba/cuda/simulator/kernel.py, ``BlockManager.run``) that
# keeps the GIL for a whole switch interval (5 ms by default) at each turn. A 0.5 ms interval
# while a simulated kernel runs lets the block's threads run instead: a tiny UNet training step
# took 6 s instead of 26 s (loaded 2-core machine). Nothing changes on a GPU.
_SIMULATOR_SWITCH_INTERVAL = 5e-4


@contextlib.contextmanager
def _simulator_thread_switching():
    from .common import SIMULATOR

    if not SIMULATOR:
        yield
        return
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, _SIMULATOR_SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def usable() -> bool:
    """True where the cuda column can run: numba-cuda is installed and either the CUDA
    simulator is on (``NUMBA_ENABLE_CUDASIM=1``) or a CUDA GPU is visible."""
    try:
        import numba
        from numba import cuda
    except Exception:  # numba's own built-in CUDA target, or nothing, without numba-cuda
        return False
    if importlib.util.find_spec("numba_cuda") is None:
        return False
    if numba.config.ENABLE_CUDASIM or os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return True
    try:
        return bool(cuda.is_available())
    except Exception:  # no driver
        return False
