"""The kernel table: every op, its argument check and its implementations, in one place.

One row per op; the columns are ``reference`` (plain loops from the definition: the living
spec), ``numba`` (fast CPU) and ``xp`` (array-module generic: numpy, or cupy on a GPU).
All columns of a row take the canonical arguments that the row's check (``checks.py``)
returns; ``dispatch.Op`` validates once and picks the column. Adding an implementation
(say ``cuda``) is one keyword per row here.
"""

from __future__ import annotations

from . import checks
from . import conv as _conv
from . import norm as _norm
from .dispatch import OPS, register


def _row(name, module, check=None):
    """Register op ``name`` with the columns ``module.{name}_reference/_numba/_xp``."""
    return register(name, check or getattr(checks, name), reference=getattr(module, f"{name}_reference"),
                    numba=getattr(module, f"{name}_numba"), xp=getattr(module, f"{name}_xp"))


conv2d_forward = _row("conv2d_forward", _conv)
conv2d_backward = _row("conv2d_backward", _conv)
conv_transpose2d_forward = _row("conv_transpose2d_forward", _conv)
conv_transpose2d_backward = _row("conv_transpose2d_backward", _conv)
group_norm_forward = _row("group_norm_forward", _norm)
group_norm_backward = _row("group_norm_backward", _norm)
layer_norm_forward = _row("layer_norm_forward", _norm)
layer_norm_backward = _row("layer_norm_backward", _norm)
batch_norm_forward = _row("batch_norm_forward", _norm)
batch_norm_backward = _row("batch_norm_backward", _norm)

__all__ = list(OPS)  # the op names: ``from npdiff.kernels import conv2d_forward``
