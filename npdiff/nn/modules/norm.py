"""GroupNorm, LayerNorm, BatchNorm2d with torch's arguments, parameter and buffer names."""

from __future__ import annotations

import numpy as np

from ... import backend
from ...kernels.checks import normalized_shape as _normalized_shape
from .. import functional as F
from .. import init
from .module import Module, Parameter


class GroupNorm(Module):
    """Group norm over (N, C, *); weight (ones) and bias (zeros) of shape (C,) when affine."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, dtype=None):
        super().__init__()
        if num_groups <= 0 or num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_groups={num_groups} must be positive and divide num_channels={num_channels}")
        dtype = dtype or backend.get_default_dtype()
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        if affine:
            self.weight = Parameter(np.empty(num_channels, dtype))
            self.bias = Parameter(np.empty(num_channels, dtype))
            init.ones_(self.weight)
            init.zeros_(self.bias)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def norm_act(norm, act, x):
    """act(norm(x)), as one fused kernel (``F.group_norm_silu``) when norm is a GroupNorm and act a
    SiLU (the ResNet blocks' and UNets' "norm → SiLU"), else the two modules in turn."""
    from .activation import SiLU

    if isinstance(norm, GroupNorm) and isinstance(act, SiLU):
        return F.group_norm_silu(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    return act(norm(x))

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class LayerNorm(Module):
    """Layer norm over the trailing ``normalized_shape`` dims; weight (ones), bias (zeros)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 dtype=None):
        super().__init__()
        dtype = dtype or backend.get_default_dtype()
        self.normalized_shape = _normalized_shape(normalized_shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dtype))
            if bias:
                self.bias = Parameter(np.zeros(self.normalized_shape, dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class BatchNorm2d(Module):
    """Batch norm over (N, C, H, W), statistics per channel.

    Buffers (torch's names): running_mean (zeros), running_var (ones),
    num_batches_tracked (int64 count). In training mode each call normalises with
    the batch statistics and, with track_running_stats, updates the running ones
    (momentum=None: cumulative average 1/num_batches_tracked). In eval mode the
    running statistics are used (the batch ones if track_running_stats=False).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype=None):
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"BatchNorm2d: num_features must be positive, got {num_features}")
        dtype = dtype or backend.get_default_dtype()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype))
            self.bias = Parameter(np.zeros(num_features, dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"BatchNorm2d: expected 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1  # 0-d array, updated in place
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or self.running_mean is None
        update = not self.training or self.track_running_stats
        return F.batch_norm(
            x, self.running_mean if update else None, self.running_var if update else None,
            self.weight, self.bias, use_batch_stats, factor, self.eps,
        )

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")
