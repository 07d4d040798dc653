"""Conv2d and ConvTranspose2d with torch's arguments, parameter names and default init."""

from __future__ import annotations

import numpy as np

from ... import backend
from ...kernels.checks import pair as _pair
from .. import functional as F
from .. import init
from .module import Module, Parameter


def _check_common(name, in_channels, out_channels, kernel_size, groups, dilation, padding_mode):
    if in_channels <= 0 or out_channels <= 0 or min(kernel_size) <= 0:
        raise ValueError(f"{name}: sizes must be positive, got in_channels={in_channels}, "
                         f"out_channels={out_channels}, kernel_size={kernel_size}")
    if groups <= 0 or in_channels % groups or out_channels % groups:
        raise ValueError(f"{name}: groups={groups} must divide in_channels={in_channels} and "
                         f"out_channels={out_channels}")
    if _pair(dilation, "dilation") != (1, 1):
        raise ValueError(f"{name}: dilation {dilation} is not supported (only dilation=1)")
    if padding_mode != "zeros":
        raise ValueError(f"{name}: padding_mode {padding_mode!r} is not supported (only 'zeros')")


class Conv2d(Module):
    """2-D convolution; weight (out, in/groups, kh, kw), bias (out,).

    Default init as torch: kaiming_uniform_(a=√5) on the weight, i.e. U(±1/√fan_in)
    with fan_in = in/groups·kh·kw, and U(±1/√fan_in) on the bias.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", dtype=None):
        super().__init__()
        kernel_size = _pair(kernel_size, "kernel_size")
        _check_common("Conv2d", in_channels, out_channels, kernel_size, groups, dilation, padding_mode)
        dtype = dtype or backend.get_default_dtype()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride = _pair(stride, "stride")
        self.padding = padding if isinstance(padding, str) else _pair(padding, "padding")
        self.dilation, self.groups, self.padding_mode = (1, 1), groups, padding_mode
        self.weight = Parameter(np.empty((out_channels, in_channels // groups) + kernel_size, dtype=dtype))
        self.bias = Parameter(np.empty(out_channels, dtype=dtype)) if bias else None
        init.default_weight_bias_(self.weight, self.bias)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, bias={self.bias is not None}")


class ConvTranspose2d(Module):
    """2-D transposed convolution; weight (in, out/groups, kh, kw), bias (out,).

    Default init as torch: kaiming_uniform_(a=√5) with torch's fan_in of this
    weight layout, weight.shape[1]·kh·kw = out/groups·kh·kw, and the bias
    U(±1/√fan_in) with the same fan_in.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, padding_mode: str = "zeros", dtype=None):
        super().__init__()
        kernel_size = _pair(kernel_size, "kernel_size")
        _check_common("ConvTranspose2d", in_channels, out_channels, kernel_size, groups, dilation, padding_mode)
        dtype = dtype or backend.get_default_dtype()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding = _pair(stride, "stride"), _pair(padding, "padding")
        self.output_padding = _pair(output_padding, "output_padding")
        if self.output_padding[0] >= self.stride[0] or self.output_padding[1] >= self.stride[1]:
            raise ValueError(f"ConvTranspose2d: output_padding {self.output_padding} must be smaller than "
                             f"stride {self.stride}")
        self.dilation, self.groups, self.padding_mode = (1, 1), groups, padding_mode
        self.weight = Parameter(np.empty((in_channels, out_channels // groups) + kernel_size, dtype=dtype))
        self.bias = Parameter(np.empty(out_channels, dtype=dtype)) if bias else None
        init.default_weight_bias_(self.weight, self.bias)

    def forward(self, x, output_size=None):
        output_padding = self.output_padding
        if output_size is not None:
            output_padding = self._output_padding_for(x.shape, output_size)
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, output_padding,
                                  self.groups)

    def _output_padding_for(self, in_shape, output_size):
        """The output_padding that makes the output (H, W) equal output_size (torch's forward(x, output_size))."""
        size = tuple(output_size)[-2:]
        pads = []
        for axis in range(2):
            smallest = (in_shape[2 + axis] - 1) * self.stride[axis] - 2 * self.padding[axis] + self.kernel_size[axis]
            extra = size[axis] - smallest
            if not 0 <= extra < self.stride[axis]:
                raise ValueError(f"ConvTranspose2d: output_size {size} unreachable from input shape {tuple(in_shape)} "
                                 f"(sizes {smallest}..{smallest + self.stride[axis] - 1} on axis {axis})")
            pads.append(extra)
        return tuple(pads)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, output_padding={self.output_padding}, groups={self.groups}, "
                f"bias={self.bias is not None}")
