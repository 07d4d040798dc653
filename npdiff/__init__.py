"""npdiff: diffusion models from scratch in NumPy and Numba."""

from .backend import (
    get_array_module,
    get_default_dtype,
    manual_seed,
    set_default_dtype,
    to_device,
)

__version__ = "0.1.0"

from .autograd import (
    Function,
    Tensor,
    abs,
    cat,
    chunk,
    clip,
    exp,
    is_grad_enabled,
    log,
    matmul,
    no_grad,
    ones,
    ones_like,
    pad,
    permute,
    rand,
    randn,
    reshape,
    set_grad_enabled,
    sigmoid,
    split,
    sqrt,
    stack,
    tanh,
    tensor,
    transpose,
    where,
    zeros,
    zeros_like,
)
