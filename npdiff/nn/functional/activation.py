"""Differentiable activations, softmax, mse_loss and dropout (torch.nn.functional names).

Each Function calls its rows of the kernel table (``npdiff.kernels``, which validates)
and saves what its analytic backward needs: the input for the activations, the output for
softmax / log_softmax / sigmoid-free forms, the keep-mask for dropout.
"""

from __future__ import annotations

from ... import backend
from ... import kernels as K
from ...autograd import Function, Tensor, _wrap
from ...kernels.checks import MSE_REDUCTIONS  # noqa: F401  (the documented option list, kept importable here)
from ...kernels.elementwise import GELU_APPROXIMATIONS, dropout_mask


class UnaryFn(Function):
    """y = f(x) elementwise; backward g·f'(x) from the saved input."""

    @staticmethod
    def forward(ctx, x, op):
        ctx.save_for_backward(x)
        ctx.op = op
        return K.OPS[op + "_forward"](x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return K.OPS[ctx.op + "_backward"](g, x), None


def relu(input) -> Tensor:
    return UnaryFn.apply(_wrap(input), "relu")


def sigmoid(input) -> Tensor:
    return UnaryFn.apply(_wrap(input), "sigmoid")


def silu(input) -> Tensor:
    """x·σ(x) (a.k.a. swish)."""
    return UnaryFn.apply(_wrap(input), "silu")


def gelu(input, approximate: str = "none") -> Tensor:
    """x·Φ(x) with the exact erf ("none") or the tanh approximation ("tanh")."""
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"gelu: approximate must be one of {GELU_APPROXIMATIONS}, got {approximate!r}")
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


def softmax(input, dim=None) -> Tensor:
    """exp(x − max) / Σ exp(x − max) along ``dim``."""
    return SoftmaxFn.apply(_wrap(input), dim, False)


def log_softmax(input, dim=None) -> Tensor:
    """x − max − log Σ exp(x − max) along ``dim``."""
    return SoftmaxFn.apply(_wrap(input), dim, True)


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
    return MSELossFn.apply(_wrap(input), _wrap(target), reduction)


class DropoutFn(Function):
    @staticmethod
    def forward(ctx, x, mask, p):
        ctx.info = (mask, p)
        return K.dropout_forward(x, mask, p)

    @staticmethod
    def backward(ctx, g):
        mask, p = ctx.info
        return K.dropout_forward(g, mask, p), None, None


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
    mask = dropout_mask(x.shape, p, generator, backend.get_array_module(x.data))
    return DropoutFn.apply(x, mask, p)
