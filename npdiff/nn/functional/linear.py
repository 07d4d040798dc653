"""Differentiable dense layer and embedding lookup."""

from __future__ import annotations

from ... import backend
from ... import kernels as K
from ...autograd import Function, Tensor, _wrap, getitem


class LinearFn(Function):
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return K.linear_forward(x, w, b)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx, gw, gb = K.linear_backward(g, x, w, need[0], need[1], ctx.has_bias and need[2])
        return gx, gw, gb


def linear(input, weight, bias=None) -> Tensor:
    """torch.nn.functional.linear: ``input @ weight.T + bias`` over the last axis.

    input: (..., in_features), weight: (out_features, in_features), bias: (out_features,).
    """
    return LinearFn.apply(_wrap(input), _wrap(weight), None if bias is None else _wrap(bias))


def embedding(input, weight) -> Tensor:
    """Rows of ``weight`` (num_embeddings, dim) picked by integer ``input`` of any shape."""
    idx = input.data if isinstance(input, Tensor) else input
    w = _wrap(weight)
    n = w.shape[0]
    if getattr(idx, "dtype", None) is not None and idx.dtype.kind not in "iu":
        raise ValueError(f"embedding: indices must be integers, got dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= n):  # host indices (the usual case): checked for free
        raise ValueError(f"embedding: indices must lie in [0, {n}), got range [{idx.min()}, {idx.max()}]")
    return getitem(w, backend.to_device(idx, w.device))  # indices go where the table is (one copy on a GPU)
