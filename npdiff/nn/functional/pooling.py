"""Differentiable pooling and upsampling: max_pool2d, avg_pool2d, interpolate (NCHW).

Each is an autograd ``Function`` over the pooling rows of the kernel table (``npdiff.kernels``);
max pooling saves the argmax of each window so its backward is a scatter.
"""

from __future__ import annotations

from ...autograd import Function, Tensor, _wrap
from ... import kernels as K


class MaxPool2dFn(Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding):
        out, argmax = K.max_pool2d_forward(x, kernel_size, stride, padding)
        ctx.save_for_backward(argmax)
        ctx.x_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, g):
        (argmax,) = ctx.saved_tensors
        return K.max_pool2d_backward(g, argmax, ctx.x_shape), None, None, None


class AvgPool2dFn(Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, count_include_pad):
        ctx.args = (x.shape, kernel_size, stride, padding, count_include_pad)
        return K.avg_pool2d_forward(x, kernel_size, stride, padding, count_include_pad)

    @staticmethod
    def backward(ctx, g):
        return (K.avg_pool2d_backward(g, *ctx.args),) + (None,) * 4


class InterpolateFn(Function):
    @staticmethod
    def forward(ctx, x, size, scale_factor, mode, align_corners):
        ctx.args = (x.shape, size, scale_factor, mode, align_corners)
        return K.interpolate_forward(x, size, scale_factor, mode, align_corners)

    @staticmethod
    def backward(ctx, g):
        return (K.interpolate_backward(g, *ctx.args),) + (None,) * 4


def max_pool2d(input, kernel_size, stride=None, padding=0) -> Tensor:
    """torch.nn.functional.max_pool2d (floor mode, dilation 1): x (N, C, H, W) →
    (N, C, ⌊(H + 2p − k)/s⌋ + 1, ...); stride defaults to kernel_size. The gradient
    goes to the first maximum of each window."""
    return MaxPool2dFn.apply(_wrap(input), kernel_size, stride, padding)


def avg_pool2d(input, kernel_size, stride=None, padding=0, *, count_include_pad=True) -> Tensor:
    """torch.nn.functional.avg_pool2d (floor mode): window means; with
    count_include_pad=False the zero padding is left out of the divisor."""
    return AvgPool2dFn.apply(_wrap(input), kernel_size, stride, padding, bool(count_include_pad))


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None) -> Tensor:
    """torch.nn.functional.interpolate for 4-D input, mode "nearest" or "bilinear".

    Give ``size`` (int or (Ho, Wo)) or ``scale_factor`` (float or pair; output
    ⌊in·scale⌋). Index conventions are torch's exactly — see
    ``kernels.pooling.nearest_source_index`` and ``linear_source_weights``.
    """
    return InterpolateFn.apply(_wrap(input), size, scale_factor, mode, align_corners)
