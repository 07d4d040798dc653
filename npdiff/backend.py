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


# ---------------------------------------------------------------------------
# the device: "cpu" (numpy) or "cuda" (cupy on a GPU; the simulated device without one)
#
# Under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, numba-cuda installed) and without a
# usable GPU, "cuda" is a *simulated device*: its arrays are ``SimulatedDeviceArray``s, numpy
# arrays that play the role of ``cupy.ndarray``. They send every op to the kernel table's cuda
# column (their array module is ``simulated_cupy``, not numpy), keep their type through numpy
# arithmetic (as cupy's ops keep arrays on the GPU), refuse to be mixed with host arrays (cupy
# raises TypeError there) and count each copy between host and device, so that a test can
# count what a training step would copy on a real GPU (``transfers()``).


class DeviceUnavailableError(RuntimeError):
    """``"cuda"`` was asked for where there is neither a GPU (with cupy) nor the CUDA simulator."""


class DeviceTransferError(TypeError):
    """A host (numpy) array was mixed with a device array in one op: cupy refuses that too."""


_transfers = {"reads": 0, "writes": 0}


def transfers() -> dict:
    """Copies between host and the simulated device so far: ``reads`` (device → host: ``float``,
    ``int``, ``bool``, ``.item()``, ``.tolist()``, ``to_device(x, "cpu")``) and ``writes``
    (host → device: ``to_device(x, "cuda")``, ``xp.asarray`` of host data, host values stored
    into a device array). A dict copy; ``reset_transfers()`` zeroes them."""
    return dict(_transfers)


def reset_transfers() -> None:
    _transfers["reads"] = _transfers["writes"] = 0


def _host_operands(values) -> list:
    """The plain host (numpy) arrays among ``values``, looking into lists and tuples."""
    found = []
    for v in values:
        if type(v) is np.ndarray:
            found.append(v)
        elif isinstance(v, (list, tuple)):
            found.extend(_host_operands(v))
    return found


def _plain(v):
    """A simulated device array as a plain numpy view (no copy); lists/tuples element-wise."""
    if isinstance(v, SimulatedDeviceArray):
        return v.view(np.ndarray)
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(a) for a in v)
    return v


def _on_device(v):
    """Results of an op on device arrays stay on the device: arrays (and numpy scalars, which
    become 0-d arrays, as cupy's reductions return) are viewed as ``SimulatedDeviceArray``."""
    if type(v) is np.ndarray:
        return v.view(SimulatedDeviceArray)
    if isinstance(v, np.generic):
        return np.asarray(v).view(SimulatedDeviceArray)
    if isinstance(v, (list, tuple)):
        return type(v)(_on_device(a) for a in v)
    return v


class SimulatedDeviceArray(np.ndarray):
    """An array on the simulated device (see above): numpy memory, cupy's rules."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        if _host_operands(inputs):
            raise DeviceTransferError(f"{ufunc.__name__}.{method}: a host (numpy) array mixed with a device "
                                      f"array; move it first with npdiff.backend.to_device(x, 'cuda')")
        if out is not None:
            kwargs["out"] = tuple(_plain(o) for o in out)
        result = getattr(ufunc, method)(*_plain(inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _on_device(result)

    def __array_function__(self, func, types, args, kwargs):
        if _host_operands(args) or _host_operands(list(kwargs.values())):
            raise DeviceTransferError(f"{func.__name__}: a host (numpy) array mixed with device arrays; "
                                      f"move it first with npdiff.backend.to_device(x, 'cuda')")
        return _on_device(func(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()}))

    def __setitem__(self, index, value):
        if type(value) is np.ndarray:
            _transfers["writes"] += 1  # cupy copies a host value over before storing it
        super().__setitem__(_plain(index), _plain(value))

    def __getitem__(self, index):
        if _host_operands([index]):  # cupy indexes with its own arrays (a numpy index would be copied over)
            raise DeviceTransferError("indexing a device array with a host (numpy) array; "
                                      "move the index first with npdiff.backend.to_device(i, 'cuda')")
        return _on_device(super().__getitem__(_plain(index)))

    def _read(self):
        _transfers["reads"] += 1
        return self.view(np.ndarray)

    def __float__(self):
        return float(self._read())

    def __int__(self):
        return int(self._read())

    def __index__(self):
        return self._read().__index__()

    def __bool__(self):
        return bool(self._read())

    def item(self, *args):
        return self._read().item(*args)

    def tolist(self):
        return self._read().tolist()

    def get(self):
        """cupy's device → host copy."""
        return to_device(self, "cpu")


def device_memory(x):
    """A simulated device array's memory as a plain numpy array (no copy, no transfer: what a
    simulated GPU kernel reads and writes); anything else unchanged. A read-only one (a broadcast
    view, such as an attention mask) is given as a copy: the simulator writes every array argument
    back after a launch (a GPU kernel reads a broadcast view in place, through its strides)."""
    if not isinstance(x, SimulatedDeviceArray):
        return x
    return x.view(np.ndarray) if x.flags.writeable else np.array(x.view(np.ndarray))


def as_device_arrays(result):
    """What a simulated GPU kernel returned (numpy arrays, or a tuple of them and None) as arrays
    of the simulated device (no copy)."""
    return _on_device(result)


class _SimulatedCupy:
    """The array module of simulated device arrays, in the role of ``cupy``: numpy's functions,
    whose results live on the simulated device; host data given to them is copied over
    (``asarray``, ``array`` ... count one write each)."""

    __name__ = "npdiff.backend.simulated_cupy"
    ndarray = SimulatedDeviceArray

    def __getattr__(self, name):
        attr = getattr(np, name)
        if isinstance(attr, (type, np.ufunc)) or not callable(attr):  # dtypes, constants, submodules;
            return attr  # ufuncs (and .at, .reduce) keep device arrays on the device by themselves

        def on_device(*args, **kwargs):
            if name in _CREATORS:
                if args and not isinstance(args[0], SimulatedDeviceArray):
                    _transfers["writes"] += 1  # host data (an array, a list, a scalar) copied to the device
            elif _host_operands(args) or _host_operands(list(kwargs.values())):
                raise DeviceTransferError(f"{name}: a host (numpy) array given to a device function; move it "
                                          f"first with npdiff.backend.to_device(x, 'cuda')")
            return _on_device(attr(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()}))

        on_device.__name__ = name
        return on_device

    @staticmethod
    def asnumpy(x):
        return to_device(x, "cpu")


_CREATORS = ("asarray", "array", "ascontiguousarray", "asanyarray")
simulated_cupy = _SimulatedCupy()


def _simulator_on() -> bool:
    """Numba's CUDA simulator is chosen (NUMBA_ENABLE_CUDASIM=1) and numba-cuda is installed."""
    import importlib.util
    import os

    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" and importlib.util.find_spec("numba_cuda") is not None


def gpu_kind() -> str | None:
    """What ``"cuda"`` means on this machine: ``"cupy"`` (a GPU), ``"simulator"`` (Numba's CUDA
    simulator, arrays ``SimulatedDeviceArray``) or None (no device)."""
    if _CUPY_OK:
        return "cupy"
    return "simulator" if _simulator_on() else None


def check_device(device) -> str:
    """``"cpu"`` or ``"cuda"`` (``"gpu"``, ``"cuda:0"`` accepted); ValueError for another name,
    RuntimeError naming what is missing when ``"cuda"`` is asked for and no device is there."""
    name = str(device).lower()
    if name in ("gpu", "cuda:0"):
        name = "cuda"
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")
    if name == "cuda" and gpu_kind() is None:
        why = ("cupy is installed but sees no CUDA GPU (no device or no driver)" if _cupy is not None
               else "cupy is not installed")
        raise DeviceUnavailableError(
            f"device 'cuda' requested but {why}. On a machine with an NVIDIA GPU install the 'gpu' extra "
            f"(pip install -e '.[gpu]': cupy-cuda12x and numba-cuda[cu12]); without a GPU, the cuda column "
            f"runs under Numba's CUDA simulator: pip install -e '.[cuda-sim]' and set NUMBA_ENABLE_CUDASIM=1 "
            f"(slow: for tests on tiny shapes)")
    return name


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a cupy array (``simulated_cupy`` for a simulated
    device array), else ``numpy``.

    Arguments may be arrays, npdiff Tensors (anything with ``.data``) or None.
    """
    for a in arrays:
        a = _array_of(a)
        if _cupy is not None and isinstance(a, _cupy.ndarray):
            return _cupy
        if isinstance(a, SimulatedDeviceArray):
            return simulated_cupy
    return np


def broadcast_coef(values, x):
    """Per-sample coefficients (B,) as a (B, 1, …, 1) array in x's dtype and array module, so that
    they broadcast against x (B, …). Computed on the CPU in float64 first (schedules live there)."""
    v = np.asarray(to_device(values, "cpu"), dtype=np.float64)
    return get_array_module(x).asarray(v.reshape(v.shape + (1,) * (x.ndim - v.ndim)), dtype=x.dtype)  # (B, 1, …, 1)


def special(xp):
    """The special-function module for arrays of ``xp``: ``scipy.special`` on numpy (and the
    simulated device), ``cupyx.scipy.special`` on cupy."""
    if xp is np or xp is simulated_cupy:
        import scipy.special as sp
    else:  # pragma: no cover - GPU only
        import cupyx.scipy.special as sp
    return sp


def is_gpu_array(x) -> bool:
    """A cupy array, or an array of the simulated device."""
    return isinstance(x, SimulatedDeviceArray) or (_cupy is not None and isinstance(x, _cupy.ndarray))


def device_of(x) -> str:
    """``"cuda"`` for cupy (and simulated device) arrays, ``"cpu"`` otherwise."""
    return "cuda" if is_gpu_array(_array_of(x)) else "cpu"


def _array_of(x):
    """The array of an npdiff Tensor (its ``.data``); an array itself otherwise (numpy and cupy
    arrays have a ``.data`` attribute too, their raw buffer, which is not what is meant)."""
    if isinstance(x, np.ndarray) or (_cupy is not None and isinstance(x, _cupy.ndarray)):
        return x
    return getattr(x, "data", x)


def to_device(x, device: str):
    """Move an array to ``"cpu"`` (numpy) or ``"cuda"`` (cupy, or the simulated device); an
    array already there is returned as it is."""
    if device == "cpu":
        if isinstance(x, SimulatedDeviceArray):
            _transfers["reads"] += 1
            return x.view(np.ndarray).copy()
        return _cupy.asnumpy(x) if is_gpu_array(x) else np.asarray(x)
    device = check_device(device)
    if device == "cpu":
        return to_device(x, "cpu")
    if is_gpu_array(x):
        return x
    if _CUPY_OK:
        return _cupy.asarray(x)
    _transfers["writes"] += 1
    return np.array(x, copy=True, subok=False).view(SimulatedDeviceArray)


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
