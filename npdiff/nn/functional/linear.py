"""Differentiable dense layer and embedding lookup."""

from __future__ import annotations

from ...autograd import Function, Tensor, _wrap, getitem
from ...kernels import gemm


class LinearFn(Function):
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return gemm.linear_forward(x, w, b)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx, gw, gb = gemm.linear_backward(g, x, w, need[0], need[1], ctx.has_bias and need[2])
        return gx, gw, gb


def linear(input, weight, bias=None) -> Tensor:
    """torch.nn.functional.linear: ``input @ weight.T + bias`` over the last axis.

    input: (..., in_features), weight: (out_features, in_features), bias: (out_features,).
    """
    x, w = _wrap(input), _wrap(weight)
    if w.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {w.shape}")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"linear: input shape {x.shape} does not end in in_features={w.shape[1]} (weight shape {w.shape})")
    if bias is not None:
        bias = _wrap(bias)
        if bias.shape != (w.shape[0],):
            raise ValueError(f"linear: bias shape {bias.shape} != ({w.shape[0]},) for weight shape {w.shape}")
    return LinearFn.apply(x, w, bias)


def embedding(input, weight) -> Tensor:
    """Rows of ``weight`` (num_embeddings, dim) picked by integer ``input`` of any shape."""
    idx = input.data if isinstance(input, Tensor) else input
    w = _wrap(weight)
    n = w.shape[0]
    if getattr(idx, "dtype", None) is not None and idx.dtype.kind not in "iu":
        raise ValueError(f"embedding: indices must be integers, got dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"embedding: indices must lie in [0, {n}), got range [{idx.min()}, {idx.max()}]")
    return getitem(w, idx)
