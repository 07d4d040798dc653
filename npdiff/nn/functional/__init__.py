"""Differentiable operations with torch.nn.functional's names and semantics."""

from .activation import dropout, gelu, log_softmax, mse_loss, relu, sigmoid, silu, softmax
from .attention import scaled_dot_product_attention
from .conv import conv2d, conv_transpose2d
from .linear import embedding, linear
from .norm import batch_norm, group_norm, group_norm_silu, layer_norm
from .pooling import avg_pool2d, interpolate, max_pool2d
