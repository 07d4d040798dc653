"""npdiff: diffusion models from scratch in NumPy and Numba."""

from .backend import (
    get_array_module,
    get_default_dtype,
    manual_seed,
    set_default_dtype,
    to_device,
)

__version__ = "0.1.0"
