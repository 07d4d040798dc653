"""Differentiable 2-D convolution and transposed convolution (NCHW).

Both are autograd ``Function``s over the conv rows of the kernel table (``npdiff.kernels``,
which validates the arguments):
the backward of conv2d computes grad-input as a transposed convolution of the
upstream gradient, and the backward of conv_transpose2d computes grad-input as
a convolution, exactly as the kernel docstrings derive.

Supported: any kernel size, stride, zero padding (int, (h, w), or the strings
"valid"/"same" for conv2d), groups, output_padding. Not supported:
dilation != 1 (raises ValueError).
"""

from __future__ import annotations

from ...autograd import Function, Tensor, _wrap
from ... import kernels as K
from ...kernels.checks import pair


def _grads(ctx, gx, gw, gb, n_extra):
    """(gx, gw, gb) then None for each of the n_extra non-Tensor arguments."""
    need = ctx.needs_input_grad
    return (gx if need[0] else None, gw if need[1] else None, gb if need[2] else None) + (None,) * n_extra


class Conv2dFn(Function):
    @staticmethod
    def forward(ctx, x, w, b, stride, padding, groups):
        ctx.save_for_backward(x, w)
        ctx.args = (stride, padding, groups)
        return K.conv2d_forward(x, w, b, stride, padding, groups)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx, gw, gb = K.conv2d_backward(x, w, g, *ctx.args, need_x=need[0], need_w=need[1], need_b=need[2])
        return _grads(ctx, gx, gw, gb, 3)


class ConvTranspose2dFn(Function):
    @staticmethod
    def forward(ctx, x, w, b, stride, padding, output_padding, groups):
        ctx.save_for_backward(x, w)
        ctx.args = (stride, padding, output_padding, groups)
        return K.conv_transpose2d_forward(x, w, b, stride, padding, output_padding, groups)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx, gw, gb = K.conv_transpose2d_backward(x, w, g, *ctx.args, need_x=need[0], need_w=need[1],
                                                 need_b=need[2])
        return _grads(ctx, gx, gw, gb, 4)


def _no_dilation(op, dilation):
    if pair(dilation, "dilation") != (1, 1):
        raise ValueError(f"{op}: dilation {dilation} is not supported (only dilation=1)")


def _string_padding(padding, weight_shape, stride):
    """'valid' -> 0; 'same' -> (kh−1)/2, (kw−1)/2 for odd kernels and stride 1."""
    if padding == "valid":
        return 0
    if padding == "same":
        kh, kw = weight_shape[2], weight_shape[3]
        if pair(stride, "stride") != (1, 1) or kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"conv2d: padding='same' needs stride 1 and an odd kernel, got stride {stride} "
                             f"and weight shape {tuple(weight_shape)}")
        return (kh - 1) // 2, (kw - 1) // 2
    raise ValueError(f"conv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    """torch.nn.functional.conv2d over NCHW input.

    input: (N, C_in, H, W), weight: (C_out, C_in/groups, kh, kw), bias: (C_out,) or None
    -> (N, C_out, Ho, Wo), Ho = ⌊(H + 2·pad_h − kh)/stride_h⌋ + 1.
    """
    _no_dilation("conv2d", dilation)
    x, w = _wrap(input), _wrap(weight)
    b = None if bias is None else _wrap(bias)
    if isinstance(padding, str):
        padding = _string_padding(padding, w.shape, stride)
    return Conv2dFn.apply(x, w, b, stride, padding, groups)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1) -> Tensor:
    """torch.nn.functional.conv_transpose2d over NCHW input (the adjoint of conv2d in its input).

    input: (N, C_in, H, W), weight: (C_in, C_out/groups, kh, kw), bias: (C_out,) or None
    -> (N, C_out, Ho, Wo), Ho = (H − 1)·stride_h − 2·pad_h + kh + output_padding_h.
    """
    _no_dilation("conv_transpose2d", dilation)
    x, w = _wrap(input), _wrap(weight)
    b = None if bias is None else _wrap(bias)
    return ConvTranspose2dFn.apply(x, w, b, stride, padding, output_padding, groups)
