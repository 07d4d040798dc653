"""The one kernel dispatch: validate once, then pick an implementation (a column of the table).

Every kernel op is a row ``Op(name, check, reference=..., numba=..., xp=...)`` (the rows are
registered in ``table.py``). All columns of a row take the same positional arguments: the
canonical form that the row's ``check`` returns after validating what the caller passed
(ints turned into pairs, defaults filled in, arrays made C-contiguous and of one dtype).
Errors are raised by the check, before any column runs, and name the argument and shapes.

Which column runs:

| switch                                   | numpy arrays | cupy arrays |
|------------------------------------------|--------------|-------------|
| ``fast`` (default)                       | ``numba``    | ``cuda`` (``xp`` for a row without one) |
| ``reference``                            | ``reference``| ``reference`` (numpy loops; CPU only) |
| a column name (``numba``, ``cuda``, ``xp``) | that column | that column |

The switch is ``NPDIFF_KERNELS=reference|fast`` (read at import) or, for a block of code,
``with npdiff.kernels.use("reference"): ...`` (per thread, nestable). ``use("cuda")`` on numpy
arrays is how the tests run the GPU column under Numba's CUDA simulator
(``npdiff/kernels/cuda/``, imported only when that column first runs).
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

from ..backend import get_array_module

# winograd, winograd4: conv2d rows only (the numba column with F(2×2, 3×3) or F(4×4, 3×3) always);
# winograd4_microgemm: F(4×4, 3×3) with its products by microgemm.py always
COLUMNS = ("reference", "numba", "cuda", "xp", "winograd", "winograd4", "winograd4_microgemm")
SWITCHES = ("fast", "reference") + COLUMNS[1:]

_DEFAULT = os.environ.get("NPDIFF_KERNELS", "fast")
if _DEFAULT not in ("fast", "reference"):
    raise ValueError(f"NPDIFF_KERNELS must be 'fast' or 'reference', got {_DEFAULT!r}")
_state = threading.local()

OPS: dict = {}  # name -> Op, in registration order: the table


def current() -> str:
    """The switch in force in this thread: 'fast', 'reference' or a column name."""
    return getattr(_state, "mode", _DEFAULT)


@contextlib.contextmanager
def use(mode: str):
    """Run the block on one implementation: ``"fast"``, ``"reference"``, or a column name."""
    if mode not in SWITCHES:
        raise ValueError(f"kernels.use: mode must be one of {SWITCHES}, got {mode!r}")
    old = current()
    _state.mode = mode
    try:
        yield
    finally:
        _state.mode = old


class Op:
    """One row of the kernel table: a validating signature and its implementations."""

    def __init__(self, name, check, **columns):
        unknown = set(columns) - set(COLUMNS)
        if unknown:
            raise ValueError(f"op {name}: unknown implementation column(s) {sorted(unknown)}")
        self.name, self.check, self.columns = name, check, columns
        self.__doc__ = f"{name}: dispatch over {sorted(columns)}.\n\n{check.__doc__ or ''}"

    def pick(self, first):
        """The implementation for the current switch and the type of the first array argument."""
        mode = current()
        if mode == "fast":
            if get_array_module(first) is np:
                mode = "numba"
            else:
                mode = "cuda" if "cuda" in self.columns else "xp"
        try:
            return self.columns[mode]
        except KeyError:
            raise ValueError(f"kernel {self.name} has no {mode!r} implementation "
                             f"(it has {sorted(self.columns)})") from None

    def __call__(self, *args, **kwargs):
        args = self.check(*args, **kwargs)
        return self.pick(args[0])(*args)

    def __repr__(self):
        return f"Op({self.name!r}, columns={sorted(self.columns)})"


def register(name, check, **columns) -> Op:
    if name in OPS:
        raise ValueError(f"kernel op {name!r} is registered twice")
    op = OPS[name] = Op(name, check, **columns)
    return op
