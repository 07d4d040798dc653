"""Scaled dot-product attention (torch.nn.functional.scaled_dot_product_attention).

The Function turns the mask into an
additive bias plane per distinct mask (bool: True = take part -> 0, False -> −∞; float:
added to the scores) plus an index from each of the N rows to its plane, and calls
the attention rows of the kernel table (which validate q, k, v and take any leading axes).
The mask gets no gradient.
"""

from __future__ import annotations

import numpy as np

from ... import backend
from ... import kernels as K
from ...autograd import Function, Tensor, _wrap


class ScaledDotProductAttentionFn(Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, bias_index, scale):
        out, lse = K.attention_forward(q, k, v, bias, bias_index, scale)  # (..., Lq, dv), (..., Lq)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.info = (bias, bias_index, scale)
        return out

    @staticmethod
    def backward(ctx, g):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = K.attention_backward(g, q, k, v, out, lse, *ctx.info)
        return dq, dk, dv, None, None, None


def _mask_to_bias(mask, batch, Lq, Lk, dtype, xp):
    """(..., Lq, Lk)-broadcastable mask -> bias (M, Lq, Lk) and index (N,) into it."""
    mask = getattr(mask, "data", mask)
    mask = xp.asarray(mask)
    full = batch + (Lq, Lk)
    if mask.ndim > len(full):
        raise ValueError(f"attn_mask shape {mask.shape} has more dims than the scores {full}")
    try:
        np.broadcast_shapes(mask.shape, full)
    except ValueError:
        raise ValueError(f"attn_mask shape {mask.shape} does not broadcast to the scores' shape {full}") from None
    mask = mask.reshape((1,) * (len(full) - mask.ndim) + mask.shape)
    lead = mask.shape[:-2]
    if mask.dtype == bool:
        bias = xp.where(mask, dtype.type(0), dtype.type(-np.inf))
    else:
        bias = mask.astype(dtype)
    bias = xp.ascontiguousarray(xp.broadcast_to(bias, lead + (Lq, Lk))).reshape(-1, Lq, Lk)  # (M, Lq, Lk)
    M = bias.shape[0]
    index = np.broadcast_to(np.arange(M).reshape(lead), batch).reshape(-1)  # (N,)
    return bias, np.ascontiguousarray(index, dtype=np.int64)


def scaled_dot_product_attention(query, key, value, attn_mask=None, scale=None) -> Tensor:
    """softmax(q kᵀ·scale + mask) v over the last two axes, torch semantics.

    query (..., Lq, d), key (..., Lk, d), value (..., Lk, dv) with equal leading axes;
    attn_mask broadcastable to (..., Lq, Lk): bool (True = attend) or float (added);
    scale defaults to 1/√d. A query whose keys are all masked gets a zero output.
    """
    q, k, v = _wrap(query), _wrap(key), _wrap(value)
    dtype = np.result_type(q.dtype, k.dtype, v.dtype)  # mixed float widths promote (differentiably)
    q, k, v = (t if t.dtype == dtype else t.astype(dtype) for t in (q, k, v))
    bias = index = None
    if attn_mask is not None and min(q.ndim, k.ndim) >= 2:  # shapes are the kernel check's; the mask's own broadcast is checked here
        xp = backend.get_array_module(q.data)
        bias, index = _mask_to_bias(attn_mask, q.shape[:-2], q.shape[-2], k.shape[-2], dtype, xp)
    return ScaledDotProductAttentionFn.apply(q, k, v, bias, index, scale)
