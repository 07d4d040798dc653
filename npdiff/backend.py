"""Backend: which array module holds the data, device moves, dtype policy and RNG.

Everything above this layer writes ``xp``-generic code: it asks
``get_array_module(x)`` for the module that owns ``x`` (numpy on the CPU, cupy on
a GPU) and calls ``xp.exp``, ``xp.matmul`` ... on it. The CPU/GPU choice is made
here and in each kernel family's dispatch, never in models or trainers.

CuPy is optional: importing npdiff on a machine without it (or without a GPU)
works, and asking for the GPU there raises a clear error.
"""

from __future__ import annotations

import numpy as np

try:  # optional GPU backend
    import cupy as _cupy

    try:
        _CUPY_OK = _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # cupy installed but no usable device
        _CUPY_OK = False
except Exception:  # pragma: no cover - depends on the machine
    _cupy = None
    _CUPY_OK = False

_DEFAULT_DTYPE = np.dtype(np.float32)
_rng = np.random.default_rng()


def cupy_available() -> bool:
    """True when cupy imports and sees at least one GPU."""
    return _CUPY_OK


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a cupy array, else ``numpy``.

    Arguments may be arrays, npdiff Tensors (anything with ``.data``) or None.
    """
    if _cupy is not None:
        for a in arrays:
            a = getattr(a, "data", a)
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def broadcast_coef(values, x):
    """Per-sample coefficients (B,) as a (B, 1, …, 1) array in x's dtype and array module, so that
    they broadcast against x (B, …). Computed on the CPU in float64 first (schedules live there)."""
    v = np.asarray(to_device(values, "cpu"), dtype=np.float64)
    return get_array_module(x).asarray(v.reshape(v.shape + (1,) * (x.ndim - v.ndim)), dtype=x.dtype)  # (B, 1, …, 1)


def special(xp):
    """The special-function module for arrays of ``xp``: ``scipy.special`` on numpy, ``cupyx.scipy.special`` on cupy."""
    if xp is np:
        import scipy.special as sp
    else:  # pragma: no cover - GPU only
        import cupyx.scipy.special as sp
    return sp


def is_gpu_array(x) -> bool:
    return _cupy is not None and isinstance(x, _cupy.ndarray)


def device_of(x) -> str:
    """``"cuda"`` for cupy arrays, ``"cpu"`` otherwise."""
    return "cuda" if is_gpu_array(getattr(x, "data", x)) else "cpu"


def to_device(x, device: str):
    """Move an array to ``"cpu"`` (numpy) or ``"cuda"`` (cupy)."""
    if device == "cpu":
        return _cupy.asnumpy(x) if is_gpu_array(x) else np.asarray(x)
    if device in ("cuda", "gpu"):
        if not _CUPY_OK:
            raise RuntimeError(
                "device 'cuda' requested but cupy is not installed or sees no GPU; "
                "install the 'gpu' extra (pip install npdiff[gpu]) on a machine with a GPU"
            )
        return _cupy.asarray(x)
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


def get_default_dtype() -> np.dtype:
    return _DEFAULT_DTYPE


def set_default_dtype(dtype) -> None:
    """Set the floating dtype new Tensors and parameters get (float32 or float64)."""
    global _DEFAULT_DTYPE
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"default dtype must be float32 or float64, got {dtype}")
    _DEFAULT_DTYPE = dtype


def manual_seed(seed: int) -> np.random.Generator:
    """Seed npdiff's global generator (parameter init, dropout, randn)."""
    global _rng
    _rng = np.random.default_rng(seed)
    return _rng


def default_generator() -> np.random.Generator:
    return _rng


def get_rng_state() -> dict:
    """The global generator's state, JSON-serialisable (for exact resume)."""
    return _rng.bit_generator.state


def set_rng_state(state: dict) -> None:
    _rng.bit_generator.state = state
