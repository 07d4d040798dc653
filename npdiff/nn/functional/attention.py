"""Scaled dot-product attention (torch.nn.functional.scaled_dot_product_attention).

The Function flattens the leading axes to N = prod(batch dims), turns the mask into an
additive bias plane per distinct mask (bool: True = take part -> 0, False -> −∞; float:
added to the scores) plus an index from each of the N rows to its plane, and calls
``npdiff.kernels.attention``. The mask gets no gradient.
"""

from __future__ import annotations

import math

import numpy as np

from ... import backend
from ...autograd import Function, Tensor, _wrap
from ...kernels import attention as K


class ScaledDotProductAttentionFn(Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, bias_index, scale):
        batch = q.shape[:-2]
        q3 = q.reshape((-1,) + q.shape[-2:])  # (N, Lq, d)
        k3 = k.reshape((-1,) + k.shape[-2:])  # (N, Lk, d)
        v3 = v.reshape((-1,) + v.shape[-2:])  # (N, Lk, dv)
        out, lse = K.attention_forward(q3, k3, v3, bias, bias_index, scale)
        ctx.save_for_backward(q3, k3, v3, out, lse)
        ctx.info = (q.shape, k.shape, v.shape, bias, bias_index, scale)
        return out.reshape(batch + out.shape[1:])  # (..., Lq, dv)

    @staticmethod
    def backward(ctx, g):
        q3, k3, v3, out, lse = ctx.saved_tensors
        qs, ks, vs, bias, bias_index, scale = ctx.info
        g3 = g.reshape(out.shape)  # (N, Lq, dv)
        dq, dk, dv = K.attention_backward(g3, q3, k3, v3, out, lse, bias, bias_index, scale)
        return dq.reshape(qs), dk.reshape(ks), dv.reshape(vs), None, None, None


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
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(f"scaled_dot_product_attention: q {q.shape}, k {k.shape}, v {v.shape} must share a rank >= 2")
    if q.shape[:-2] != k.shape[:-2] or q.shape[:-2] != v.shape[:-2]:
        raise ValueError(f"scaled_dot_product_attention: batch dims differ: q {q.shape}, k {k.shape}, v {v.shape}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"scaled_dot_product_attention: need q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv); "
            f"got q {q.shape}, k {k.shape}, v {v.shape}"
        )
    if 0 in q.shape or 0 in k.shape or 0 in v.shape:
        raise ValueError(f"scaled_dot_product_attention: empty input q {q.shape}, k {k.shape}, v {v.shape}")
    dtype = np.result_type(q.dtype, k.dtype, v.dtype)
    if dtype.kind != "f":
        raise ValueError(f"scaled_dot_product_attention needs floating inputs, got {dtype}")
    q, k, v = (t if t.dtype == dtype else t.astype(dtype) for t in (q, k, v))
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    bias = index = None
    if attn_mask is not None:
        xp = backend.get_array_module(q.data)
        bias, index = _mask_to_bias(attn_mask, q.shape[:-2], q.shape[-2], k.shape[-2], dtype, xp)
    return ScaledDotProductAttentionFn.apply(q, k, v, bias, index, s)
