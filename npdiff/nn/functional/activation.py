"""Differentiable activations, softmax, mse_loss and dropout (torch.nn.functional names).

Each Function calls the kernels in ``npdiff.kernels.elementwise`` (Numba on CPU, xp on GPU)
and saves what its analytic backward needs: the input for the activations, the output for
softmax / log_softmax / sigmoid-free forms, the keep-mask for dropout.
"""

from __future__ import annotations

from ... import backend
from ...autograd import Function, Tensor, _wrap
from ...kernels import elementwise as K

MSE_REDUCTIONS = ("mean", "sum", "none")


class UnaryFn(Function):
    """y = f(x) elementwise; backward g·f'(x) from the saved input."""

    @staticmethod
    def forward(ctx, x, op):
        ctx.save_for_backward(x)
        ctx.op = op
        return K.unary_forward(op, x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return K.unary_backward(ctx.op, g, x), None


def relu(input) -> Tensor:
    return UnaryFn.apply(_wrap(input), "relu")


def sigmoid(input) -> Tensor:
    return UnaryFn.apply(_wrap(input), "sigmoid")


def silu(input) -> Tensor:
    """x·σ(x) (a.k.a. swish)."""
    return UnaryFn.apply(_wrap(input), "silu")


def gelu(input, approximate: str = "none") -> Tensor:
    """x·Φ(x) with the exact erf ("none") or the tanh approximation ("tanh")."""
    if approximate not in K.GELU_APPROXIMATIONS:
        raise ValueError(f"gelu: approximate must be one of {K.GELU_APPROXIMATIONS}, got {approximate!r}")
    return UnaryFn.apply(_wrap(input), "gelu" if approximate == "none" else "gelu_tanh")


class SoftmaxFn(Function):
    @staticmethod
    def forward(ctx, x, dim, log):
        y = K.softmax_forward(x, dim, log)
        ctx.save_for_backward(y)
        ctx.info = (dim, log)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        dim, log = ctx.info
        return K.softmax_backward(g, y, dim, log), None, None


def _softmax_dim(x, dim, name):
    if dim is None:
        raise ValueError(f"{name}: dim must be given (tensor shape {x.shape})")
    if not -x.ndim <= dim < max(x.ndim, 1):
        raise ValueError(f"{name}: dim {dim} out of range for shape {x.shape}")
    return dim % x.ndim


def softmax(input, dim=None) -> Tensor:
    """exp(x − max) / Σ exp(x − max) along ``dim``."""
    x = _wrap(input)
    return SoftmaxFn.apply(x, _softmax_dim(x, dim, "softmax"), False)


def log_softmax(input, dim=None) -> Tensor:
    """x − max − log Σ exp(x − max) along ``dim``."""
    x = _wrap(input)
    return SoftmaxFn.apply(x, _softmax_dim(x, dim, "log_softmax"), True)


class MSELossFn(Function):
    @staticmethod
    def forward(ctx, x, t, reduction):
        ctx.save_for_backward(x, t)
        ctx.reduction = reduction
        return K.mse_loss_forward(x, t, reduction)

    @staticmethod
    def backward(ctx, g):
        x, t = ctx.saved_tensors
        gx, gt = K.mse_loss_backward(g, x, t, ctx.reduction)
        return gx, gt, None


def mse_loss(input, target, reduction: str = "mean") -> Tensor:
    """Mean-squared error; input and target must have the same shape."""
    x, t = _wrap(input), _wrap(target)
    if reduction not in MSE_REDUCTIONS:
        raise ValueError(f"mse_loss: reduction must be one of {MSE_REDUCTIONS}, got {reduction!r}")
    if x.shape != t.shape:
        raise ValueError(f"mse_loss: input shape {x.shape} and target shape {t.shape} differ")
    return MSELossFn.apply(x, t, reduction)


class DropoutFn(Function):
    @staticmethod
    def forward(ctx, x, mask, p):
        ctx.info = (mask, p)
        return K.dropout_apply(x, mask, p)

    @staticmethod
    def backward(ctx, g):
        mask, p = ctx.info
        return K.dropout_apply(g, mask, p), None, None


def dropout(input, p: float = 0.5, training: bool = True, generator=None) -> Tensor:
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1 − p).

    Identity when not training or p = 0. The mask comes from ``generator`` (a numpy
    Generator), default ``npdiff.backend.default_generator()``.
    """
    x = _wrap(input)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    mask = K.dropout_mask(x.shape, p, generator, backend.get_array_module(x.data))
    return DropoutFn.apply(x, mask, p)
