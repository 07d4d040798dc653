"""Differentiable normalisation layers: group norm, layer norm, batch norm.

Each is an autograd ``Function`` whose forward saves the statistics (mean and
reciprocal standard deviation ρ = 1/√(σ² + ε)) and whose backward is the closed
form in ``npdiff.kernels.norm`` (through the kernel table, which validates) — never a chain
of elementary ops.
"""

from __future__ import annotations

from ...autograd import Function, Tensor, _wrap
from ... import kernels as K
from ...kernels.checks import normalized_shape as _normalized_shape


def _grads(ctx, dx, dw, db, n_extra):
    need = ctx.needs_input_grad
    return (dx if need[0] else None, dw if need[1] else None, db if need[2] else None) + (None,) * n_extra


class GroupNormFn(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, num_groups, eps):
        y, mean, rstd = K.group_norm_forward(x, num_groups, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.num_groups = num_groups
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = K.group_norm_backward(g, x, mean, rstd, ctx.num_groups, weight)
        return _grads(ctx, dx, dw, db, 2)


class GroupNormSiLUFn(Function):
    """silu(group_norm(x)) in one kernel each way: the normalised z is never stored; the backward
    recomputes it from x and the statistics (``kernels.group_norm_silu_*``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, num_groups, eps):
        y, mean, rstd = K.group_norm_silu_forward(x, num_groups, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.num_groups = num_groups
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dw, db = K.group_norm_silu_backward(g, x, mean, rstd, ctx.num_groups, weight, bias)
        return _grads(ctx, dx, dw, db, 2)


class LayerNormFn(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, normalized_shape, eps):
        y, mean, rstd = K.layer_norm_forward(x, normalized_shape, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.normalized_shape = normalized_shape
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = K.layer_norm_backward(g, x, mean, rstd, ctx.normalized_shape, weight)
        return _grads(ctx, dx, dw, db, 2)


class BatchNormFn(Function):
    """Training: batch statistics, and (when given) the running statistics are
    updated in place: r ← (1 − m)·r + m·batch, with the unbiased batch variance
    (σ²·M/(M − 1), M = N·H·W) going into running_var, as torch does."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps):
        y, mean, rstd, var = K.batch_norm_forward(x, weight, bias, running_mean, running_var, training, eps)
        if training and running_mean is not None:
            m = x.size // x.shape[1]
            running_mean *= 1 - momentum
            running_mean += momentum * mean.astype(running_mean.dtype)
            running_var *= 1 - momentum
            running_var += momentum * (var * (m / (m - 1))).astype(running_var.dtype)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.training = training
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = K.batch_norm_backward(g, x, mean, rstd, weight, ctx.training)
        return _grads(ctx, dx, dw, db, 5)


def _opt(t):
    return None if t is None else _wrap(t)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5) -> Tensor:
    """torch.nn.functional.group_norm: x (N, C, *) normalised over groups of C/num_groups
    channels and all spatial positions; weight, bias (C,). See ``kernels.norm``."""
    return GroupNormFn.apply(_wrap(input), _opt(weight), _opt(bias), num_groups, float(eps))


def group_norm_silu(input, num_groups, weight=None, bias=None, eps=1e-5) -> Tensor:
    """silu(group_norm(input, ...)) fused: one pass over memory forward and one backward (the
    ResNet block's norm → activation). Same arguments as ``group_norm``."""
    return GroupNormSiLUFn.apply(_wrap(input), _opt(weight), _opt(bias), num_groups, float(eps))


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5) -> Tensor:
    """torch.nn.functional.layer_norm: normalise over the trailing ``normalized_shape`` dims;
    weight, bias of shape normalized_shape."""
    ns = _normalized_shape(normalized_shape)
    return LayerNormFn.apply(_wrap(input), _opt(weight), _opt(bias), ns, float(eps))


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5) -> Tensor:
    """torch.nn.functional.batch_norm over x (N, C, *), statistics per channel.

    training=True: batch statistics; running_mean/running_var (arrays or Tensors, or None)
    are updated in place with ``momentum``. training=False: the running statistics are used.
    """
    x = _wrap(input)
    rm = running_mean.data if isinstance(running_mean, Tensor) else running_mean
    rv = running_var.data if isinstance(running_var, Tensor) else running_var
    return BatchNormFn.apply(x, _opt(weight), _opt(bias), rm, rv, bool(training), float(momentum), float(eps))
