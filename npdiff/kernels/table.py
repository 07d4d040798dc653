"""The kernel table: every op, its argument check and its implementations, in one place.

One row per op; the columns are ``reference`` (plain loops from the definition: the living
spec), ``numba`` (fast CPU), ``cuda`` (Numba's CUDA target, ``kernels/cuda/``: cupy arrays on a
GPU, numpy arrays under the CUDA simulator) and ``xp`` (array-module generic: numpy or cupy).
All columns of a row take the canonical arguments that the row's check (``checks.py``)
returns; ``dispatch.Op`` validates once and picks the column. Adding an implementation
is one keyword per row here.
"""

from __future__ import annotations

from . import checks
from . import attention as _attention
from . import conv as _conv
from . import elementwise as _elementwise
from . import gemm as _gemm
from . import norm as _norm
from . import pooling as _pooling
from .cuda import column as _cuda_column
from .dispatch import OPS, register


def _row(name, module, check=None):
    """Register op ``name`` with the columns ``module.{name}_reference/_numba/_xp`` and
    ``cuda/<family>.{name}_cuda`` (imported when first called)."""
    return register(name, check or getattr(checks, name), reference=getattr(module, f"{name}_reference"),
                    numba=getattr(module, f"{name}_numba"), xp=getattr(module, f"{name}_xp"),
                    cuda=_cuda_column(module.__name__.rsplit(".", 1)[-1], f"{name}_cuda"))


conv2d_forward = _row("conv2d_forward", _conv)
conv2d_forward.columns["winograd"] = _conv.conv2d_forward_winograd  # Winograd F(2×2, 3×3) whatever the shape
conv2d_backward = _row("conv2d_backward", _conv)
conv2d_backward.columns["winograd"] = _conv.conv2d_backward_winograd
conv2d_forward.columns["winograd4"] = _conv.conv2d_forward_winograd4  # F(4×4, 3×3), channels last, every shape
conv2d_backward.columns["winograd4"] = _conv.conv2d_backward_winograd4
conv2d_forward.columns["winograd4_microgemm"] = _conv.conv2d_forward_winograd4_microgemm  # its GEMMs by microgemm.py
conv2d_backward.columns["winograd4_microgemm"] = _conv.conv2d_backward_winograd4_microgemm
conv_transpose2d_forward = _row("conv_transpose2d_forward", _conv)
conv_transpose2d_backward = _row("conv_transpose2d_backward", _conv)
group_norm_forward = _row("group_norm_forward", _norm)
group_norm_backward = _row("group_norm_backward", _norm)
group_norm_silu_forward = _row("group_norm_silu_forward", _norm)
group_norm_silu_backward = _row("group_norm_silu_backward", _norm)
layer_norm_forward = _row("layer_norm_forward", _norm)
layer_norm_backward = _row("layer_norm_backward", _norm)
batch_norm_forward = _row("batch_norm_forward", _norm)
batch_norm_backward = _row("batch_norm_backward", _norm)
attention_forward = _row("attention_forward", _attention)
attention_backward = _row("attention_backward", _attention)
max_pool2d_forward = _row("max_pool2d_forward", _pooling)
max_pool2d_backward = _row("max_pool2d_backward", _pooling)
avg_pool2d_forward = _row("avg_pool2d_forward", _pooling)
avg_pool2d_backward = _row("avg_pool2d_backward", _pooling)
interpolate_forward = _row("interpolate_forward", _pooling)
interpolate_backward = _row("interpolate_backward", _pooling)
softmax_forward = _row("softmax_forward", _elementwise)
softmax_backward = _row("softmax_backward", _elementwise)
mse_loss_forward = _row("mse_loss_forward", _elementwise)
mse_loss_backward = _row("mse_loss_backward", _elementwise)
dropout_forward = _row("dropout_forward", _elementwise)
linear_forward = _row("linear_forward", _gemm)
linear_backward = _row("linear_backward", _gemm)

# one row pair per activation: relu_forward(x), relu_backward(g, x), ... (scalar pairs in elementwise.py)
for _name in _elementwise.ACTIVATIONS:
    _cols = _elementwise.activation_columns(_name)
    _cols["cuda"] = (_cuda_column("elementwise", f"{_name}_forward_cuda"),
                     _cuda_column("elementwise", f"{_name}_backward_cuda"))
    globals()[f"{_name}_forward"] = register(f"{_name}_forward", checks.unary_forward,
                                             **{c: fb[0] for c, fb in _cols.items()})
    globals()[f"{_name}_backward"] = register(f"{_name}_backward", checks.unary_backward,
                                              **{c: fb[1] for c, fb in _cols.items()})

__all__ = list(OPS)  # the op names: ``from npdiff.kernels import conv2d_forward``
