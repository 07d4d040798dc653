"""Argument checks of every kernel op: the one place where kernel inputs are validated.

Each function here has the public signature of one op of the table (``table.py``) and
returns the op's canonical positional arguments, which every implementation column takes:
sizes as int pairs, defaults filled in, arrays C-contiguous, gradients in the forward's
dtype. A bad argument raises ``ValueError`` naming the op, the argument and the shapes.
Checks cost O(1) Python work per call (plus a copy only for non-contiguous input).
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module


def pair(v, name):
    """An int or a length-2 sequence -> (int, int)."""
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair (h, w), got {v}")
    return v


def normalized_shape(ns):
    """An int or a sequence of ints -> a tuple (layer norm's trailing dims)."""
    if isinstance(ns, (int, np.integer)):
        return (int(ns),)
    return tuple(int(s) for s in ns)


_ns = normalized_shape  # the name the checks use where an argument is called normalized_shape


def _c(a, dtype=None):
    """``a`` C-contiguous (and of ``dtype`` when given); None stays None; no copy when it already is."""
    if a is None:
        return None
    if a.flags.c_contiguous and (dtype is None or a.dtype == dtype):
        return a
    return get_array_module(a).ascontiguousarray(a, dtype=dtype)


def _same_shape(op, what, a, b, b_name="input"):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{op}: {what} shape {tuple(a.shape)} != {b_name} shape {tuple(b.shape)}")


# ---------------------------------------------------------------------------
# conv2d, conv_transpose2d


def conv2d_output_size(H, W, kh, kw, stride, padding):
    """(Ho, Wo) of a conv2d: ⌊(H + 2ph − kh)/sh⌋ + 1 per axis."""
    (sh, sw), (ph, pw) = stride, padding
    return (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1


def conv_transpose2d_output_size(H, W, kh, kw, stride, padding, output_padding):
    """(Ho, Wo) of a conv_transpose2d: (H − 1)·sh − 2ph + kh + oph per axis."""
    (sh, sw), (ph, pw), (oh, ow) = stride, padding, output_padding
    return (H - 1) * sh - 2 * ph + kh + oh, (W - 1) * sw - 2 * pw + kw + ow


def _conv(op, x, w, b, stride, padding, groups, transposed, output_padding=0):
    """Validate a (transposed) convolution; return (stride, padding, output_padding, out shape)."""
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    output_padding = pair(output_padding, "output_padding")
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if w.ndim != 4:
        raise ValueError(f"{op}: weight must be 4-D, got shape {tuple(w.shape)}")
    if min(x.shape) <= 0 or min(w.shape) <= 0:
        raise ValueError(f"{op}: sizes must be positive, got input {tuple(x.shape)}, weight {tuple(w.shape)}")
    if not isinstance(groups, (int, np.integer)) or groups <= 0:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    C = x.shape[1]
    if transposed:  # w: (C, O/groups, kh, kw)
        c_expect, O = w.shape[0], w.shape[1] * groups
        wshape = "(C_in, C_out/groups, kh, kw)"
    else:  # w: (O, C/groups, kh, kw)
        c_expect, O = w.shape[1] * groups, w.shape[0]
        wshape = "(C_out, C_in/groups, kh, kw)"
    if C % groups or (w.shape[0] % groups):
        raise ValueError(f"{op}: groups={groups} must divide the input channels of input shape {tuple(x.shape)} "
                         f"and weight shape {tuple(w.shape)} axis 0")
    if C != c_expect:
        raise ValueError(f"{op}: input shape {tuple(x.shape)} has {C} channels but weight shape {tuple(w.shape)} "
                         f"{wshape} with groups={groups} expects {c_expect}")
    if b is not None and tuple(b.shape) != (O,):
        raise ValueError(f"{op}: bias shape {tuple(b.shape)} != ({O},) for weight shape {tuple(w.shape)}")
    if min(stride) <= 0 or min(padding) < 0 or min(output_padding) < 0:
        raise ValueError(f"{op}: need stride > 0, padding >= 0, output_padding >= 0; got "
                         f"stride={stride}, padding={padding}, output_padding={output_padding}")
    if output_padding[0] >= stride[0] or output_padding[1] >= stride[1]:
        raise ValueError(f"{op}: output_padding {output_padding} must be smaller than stride {stride}")
    if x.dtype.kind != "f":
        raise ValueError(f"{op}: floating input required, got dtype {x.dtype}")
    for a in (w, b):
        if a is not None and a.dtype != x.dtype:
            raise ValueError(f"{op}: input dtype {x.dtype} and parameter dtype {a.dtype} differ")
    kh, kw = w.shape[2], w.shape[3]
    size = (conv_transpose2d_output_size(x.shape[2], x.shape[3], kh, kw, stride, padding, output_padding)
            if transposed else conv2d_output_size(x.shape[2], x.shape[3], kh, kw, stride, padding))
    if min(size) <= 0:
        raise ValueError(f"{op}: output size {size} is not positive for input {tuple(x.shape)}, "
                         f"weight {tuple(w.shape)}, stride {stride}, padding {padding}")
    return stride, padding, output_padding, (x.shape[0], O) + size


def _conv_grad(op, g, x, out_shape):
    if tuple(g.shape) != out_shape:
        raise ValueError(f"{op} backward: grad shape {tuple(g.shape)} != output shape {out_shape}")
    return _c(g, x.dtype)


def conv2d_forward(x, w, b=None, stride=1, padding=0, groups=1):
    """x (N, C, H, W), w (O, C/groups, kh, kw), b (O,) or None -> (N, O, Ho, Wo)."""
    s, p, _, _ = _conv("conv2d", x, w, b, stride, padding, groups, transposed=False)
    return _c(x), _c(w), _c(b), s, p, int(groups)


def conv2d_backward(x, w, g, stride=1, padding=0, groups=1, need_x=True, need_w=True, need_b=True):
    """(gx, gw, gb) of conv2d for upstream g (N, O, Ho, Wo); None where not needed."""
    s, p, _, shape = _conv("conv2d", x, w, None, stride, padding, groups, transposed=False)
    return (_c(x), _c(w), _conv_grad("conv2d", g, x, shape), s, p, int(groups), bool(need_x), bool(need_w),
            bool(need_b))


def conv_transpose2d_forward(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1):
    """x (N, C, H, W), w (C, O/groups, kh, kw), b (O,) or None -> (N, O, Ho, Wo)."""
    s, p, op, _ = _conv("conv_transpose2d", x, w, b, stride, padding, groups, True, output_padding)
    return _c(x), _c(w), _c(b), s, p, op, int(groups)


def conv_transpose2d_backward(x, w, g, stride=1, padding=0, output_padding=0, groups=1, need_x=True, need_w=True,
                              need_b=True):
    """(gx, gw, gb) of conv_transpose2d for upstream g (N, O, Ho, Wo); None where not needed."""
    s, p, op, shape = _conv("conv_transpose2d", x, w, None, stride, padding, groups, True, output_padding)
    return (_c(x), _c(w), _conv_grad("conv_transpose2d", g, x, shape), s, p, op, int(groups), bool(need_x),
            bool(need_w), bool(need_b))


# ---------------------------------------------------------------------------
# group / layer / batch norm


def _affine(name, arr, shape, x_shape):
    if arr is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} for input of shape {tuple(x_shape)}, "
                         f"got {tuple(arr.shape)}")


def _stats(op, mean, rstd, shape):
    for name, a in (("mean", mean), ("rstd", rstd)):
        if tuple(a.shape) != tuple(shape):
            raise ValueError(f"{op} backward: {name} shape {tuple(a.shape)} != {tuple(shape)}")


def group_norm_forward(x, num_groups, weight=None, bias=None, eps=1e-5):
    """x (N, C, *), weight/bias (C,) or None -> (y like x, mean (N, G), rstd (N, G))."""
    if x.ndim < 2:
        raise ValueError(f"group_norm: expected x of shape (N, C, *), got {tuple(x.shape)}")
    C = x.shape[1]
    if not isinstance(num_groups, (int, np.integer)) or num_groups <= 0 or C % num_groups:
        raise ValueError(f"group_norm: num_groups={num_groups} must be positive and divide C={C} "
                         f"(x shape {tuple(x.shape)})")
    if x.size == 0:
        raise ValueError(f"group_norm: empty input of shape {tuple(x.shape)}")
    _affine("group_norm weight", weight, (C,), x.shape)
    _affine("group_norm bias", bias, (C,), x.shape)
    if eps < 0:
        raise ValueError(f"group_norm: eps must be >= 0, got {eps}")
    return _c(x), int(num_groups), weight, bias, float(eps)


def group_norm_backward(g, x, mean, rstd, num_groups, weight=None):
    """(dx, dw, db) of group norm from the forward's mean and rstd (N, G)."""
    _same_shape("group_norm backward", "grad", g, x)
    _stats("group_norm", mean, rstd, (x.shape[0], num_groups))
    return _c(g, x.dtype), _c(x), mean, rstd, int(num_groups), weight


def group_norm_silu_forward(x, num_groups, weight=None, bias=None, eps=1e-5):
    """group_norm_forward's arguments (silu(group_norm(x)) fused)."""
    return group_norm_forward(x, num_groups, weight, bias, eps)


def group_norm_silu_backward(g, x, mean, rstd, num_groups, weight=None, bias=None):
    """group_norm_backward's arguments and the bias (the backward recomputes z = group_norm(x))."""
    return group_norm_backward(g, x, mean, rstd, num_groups, weight) + (bias,)


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """x (..., *D), D = normalized_shape; weight/bias D or None -> (y, mean, rstd of x.shape[:-len(D)])."""
    ns = _ns(normalized_shape)
    if len(ns) == 0 or len(ns) > x.ndim or tuple(x.shape[x.ndim - len(ns):]) != ns:
        raise ValueError(f"layer_norm: normalized_shape {ns} does not match the trailing dims of x shape "
                         f"{tuple(x.shape)}")
    if x.size == 0:
        raise ValueError(f"layer_norm: empty input of shape {tuple(x.shape)}")
    _affine("layer_norm weight", weight, ns, x.shape)
    _affine("layer_norm bias", bias, ns, x.shape)
    if eps < 0:
        raise ValueError(f"layer_norm: eps must be >= 0, got {eps}")
    return _c(x), ns, weight, bias, float(eps)


def layer_norm_backward(g, x, mean, rstd, normalized_shape, weight=None):
    """(dx, dw, db) of layer norm from the forward's mean and rstd."""
    ns = _ns(normalized_shape)
    _same_shape("layer_norm backward", "grad", g, x)
    _stats("layer_norm", mean, rstd, x.shape[: x.ndim - len(ns)])
    return _c(g, x.dtype), _c(x), mean, rstd, ns, weight


def batch_norm_forward(x, weight=None, bias=None, running_mean=None, running_var=None, training=True, eps=1e-5):
    """x (N, C, *); weight/bias/running stats (C,) or None -> (y, mean (C,), rstd (C,), biased var (C,)).

    training: the batch statistics (the running ones, when given, are only checked: their
    update is the caller's); eval: the running statistics, which must be given.
    """
    if x.ndim < 2:
        raise ValueError(f"batch_norm: expected x of shape (N, C, *), got {tuple(x.shape)}")
    if x.size == 0:
        raise ValueError(f"batch_norm: empty input of shape {tuple(x.shape)}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        raise ValueError("batch_norm: running_mean and running_var are required when training=False")
    if training and x.size // x.shape[1] <= 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got input "
                         f"{tuple(x.shape)}")
    C = x.shape[1]
    for name, arr in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                      ("bias", bias)):
        _affine(f"batch_norm {name}", arr, (C,), x.shape)
    return _c(x), weight, bias, running_mean, running_var, bool(training), float(eps)


def batch_norm_backward(g, x, mean, rstd, weight=None, training=True):
    """(dx, dw, db) of batch norm from the statistics the forward used (C,)."""
    _same_shape("batch_norm backward", "grad", g, x)
    _stats("batch_norm", mean, rstd, (x.shape[1],))
    return _c(g, x.dtype), _c(x), mean, rstd, weight, bool(training)


# ---------------------------------------------------------------------------
# attention


def _attention(q, k, v, bias, bias_index, scale):
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(f"scaled_dot_product_attention: q {q.shape}, k {k.shape}, v {v.shape} must share a rank >= 2")
    if q.shape[:-2] != k.shape[:-2] or q.shape[:-2] != v.shape[:-2]:
        raise ValueError(f"scaled_dot_product_attention: batch dims differ: q {q.shape}, k {k.shape}, v {v.shape}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"scaled_dot_product_attention: attention shapes do not match: need q (..., Lq, d), "
                         f"k (..., Lk, d), v (..., Lk, dv); got q {q.shape}, k {k.shape}, v {v.shape}")
    if 0 in q.shape or 0 in k.shape or 0 in v.shape:
        raise ValueError(f"scaled_dot_product_attention: empty input q {q.shape}, k {k.shape}, v {v.shape}")
    if q.dtype.kind != "f" or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"scaled_dot_product_attention needs q, k, v of one floating dtype, got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    N = math.prod(q.shape[:-2])
    if bias is not None:
        if bias.ndim != 3 or tuple(bias.shape[1:]) != (q.shape[-2], k.shape[-2]):
            raise ValueError(f"attention bias must be (M, Lq, Lk) = (M, {q.shape[-2]}, {k.shape[-2]}), "
                             f"got {tuple(bias.shape)}")
        if bias_index is None or len(bias_index) != N:
            raise ValueError(f"attention bias_index must have N = {N} entries (the batch dims {q.shape[:-2]})")
        bias = _c(bias, q.dtype)
        bias_index = np.ascontiguousarray(bias_index, dtype=np.int64)
    elif bias_index is not None:
        raise ValueError("attention: bias_index given without bias")
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return bias, bias_index, s


def attention_forward(q, k, v, bias=None, bias_index=None, scale=None):
    """q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv); bias (M, Lq, Lk) with bias_index (N,) into M,
    N = prod(...) -> (out (..., Lq, dv), lse (..., Lq)); scale defaults to 1/√d."""
    bias, bias_index, s = _attention(q, k, v, bias, bias_index, scale)
    return _c(q), _c(k), _c(v), bias, bias_index, s


def attention_backward(g, q, k, v, out, lse, bias=None, bias_index=None, scale=None):
    """(dq, dk, dv) of attention for upstream g (..., Lq, dv), from the forward's out and lse."""
    bias, bias_index, s = _attention(q, k, v, bias, bias_index, scale)
    _same_shape("attention backward", "grad", g, out, "output")
    if tuple(lse.shape) != tuple(q.shape[:-1]):
        raise ValueError(f"attention backward: lse shape {tuple(lse.shape)} != {tuple(q.shape[:-1])}")
    dt = q.dtype
    return _c(g, dt), _c(q), _c(k), _c(v), _c(out, dt), _c(lse, dt), bias, bias_index, s


# ---------------------------------------------------------------------------
# pooling, interpolation


def pool_output_size(H, W, kernel, stride, padding):
    """(Ho, Wo) = (⌊(H + 2ph − kh)/sh⌋ + 1, ⌊(W + 2pw − kw)/sw⌋ + 1)."""
    return (H + 2 * padding[0] - kernel[0]) // stride[0] + 1, (W + 2 * padding[1] - kernel[1]) // stride[1] + 1


def _pool(name, shape, kernel_size, stride, padding):
    """Normalise kernel/stride/padding to pairs and validate them against x's shape."""
    if len(shape) != 4:
        raise ValueError(f"{name}: expected x of shape (N, C, H, W), got {tuple(shape)}")
    k = pair(kernel_size, "kernel_size")
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else pair(stride, "stride")
    p = pair(padding, "padding")
    if min(k) <= 0 or min(s) <= 0 or min(p) < 0:
        raise ValueError(f"{name}: kernel {k} and stride {s} must be positive, padding {p} non-negative "
                         f"(x {tuple(shape)})")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{name}: padding {p} must be at most half the kernel size {k}")
    Ho, Wo = pool_output_size(shape[2], shape[3], k, s, p)
    if Ho <= 0 or Wo <= 0 or 0 in shape:
        raise ValueError(f"{name}: input {tuple(shape)} is too small for kernel {k}, stride {s}, padding {p}")
    return k, s, p, tuple(shape[:2]) + (Ho, Wo)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """x (N, C, H, W) -> (out, argmax (int64, h·W + w of the first maximum)), both (N, C, Ho, Wo)."""
    k, s, p, _ = _pool("max_pool2d", x.shape, kernel_size, stride, padding)
    return _c(x), k, s, p


def max_pool2d_backward(g, argmax, x_shape):
    """dx (x_shape) from g and the forward's argmax."""
    _same_shape("max_pool2d backward", "grad", g, argmax, "argmax")
    return _c(g), _c(argmax), tuple(int(s) for s in x_shape)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """x (N, C, H, W) -> window means (N, C, Ho, Wo)."""
    k, s, p, _ = _pool("avg_pool2d", x.shape, kernel_size, stride, padding)
    return _c(x), k, s, p, bool(count_include_pad)


def avg_pool2d_backward(g, x_shape, kernel_size, stride=None, padding=0, count_include_pad=True):
    """dx (x_shape) for upstream g (N, C, Ho, Wo)."""
    x_shape = tuple(int(s) for s in x_shape)
    k, s, p, expect = _pool("avg_pool2d", x_shape, kernel_size, stride, padding)
    if tuple(g.shape) != expect:
        raise ValueError(f"avg_pool2d backward: grad shape {tuple(g.shape)}, expected {expect}")
    return _c(g), x_shape, k, s, p, bool(count_include_pad)


def interpolate_size(x_shape, size=None, scale_factor=None):
    """Output (Ho, Wo) and the per-axis scale factors the index maths should use.

    Exactly one of ``size`` (int or pair) and ``scale_factor`` (float or pair) is given;
    with a scale factor the output is ⌊in · scale⌋ and the kernels use 1/scale (torch's
    rule when recompute_scale_factor is not set); with a size they use in/out.
    """
    if len(x_shape) != 4:
        raise ValueError(f"interpolate: expected x of shape (N, C, H, W), got {tuple(x_shape)}")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    if size is not None:
        out = pair(size, "size")
        scales = (None, None)
    else:
        scales = (tuple(float(s) for s in scale_factor) if isinstance(scale_factor, (tuple, list))
                  else (float(scale_factor),) * 2)
        if len(scales) != 2 or min(scales) <= 0:
            raise ValueError(f"interpolate: scale_factor {scale_factor} must be positive (one or two values)")
        out = (int(math.floor(x_shape[2] * scales[0])), int(math.floor(x_shape[3] * scales[1])))
    if min(out) <= 0 or min(x_shape) <= 0:
        raise ValueError(f"interpolate: output size {out} from input {tuple(x_shape)} must be positive")
    return out, scales


def _mode(mode, align_corners):
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"interpolate: mode {mode!r} is not supported (expected 'nearest' or 'bilinear')")
    if mode == "nearest" and align_corners is not None:
        raise ValueError("interpolate: align_corners can only be set with mode='bilinear'")
    return bool(align_corners)


def interpolate_forward(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """x (N, C, H, W) -> (N, C, Ho, Wo); canonical form (x, (Ho, Wo), mode, align_corners, scales)."""
    ac = _mode(mode, align_corners)
    out, scales = interpolate_size(x.shape, size, scale_factor)
    return _c(x), out, mode, ac, scales


def interpolate_backward(g, x_shape, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """dx (x_shape) for upstream g; same arguments as the forward; canonical form (g, x_shape, mode,
    align_corners, scales)."""
    ac = _mode(mode, align_corners)
    x_shape = tuple(int(s) for s in x_shape)
    out, scales = interpolate_size(x_shape, size, scale_factor)
    if tuple(g.shape) != x_shape[:2] + out:
        raise ValueError(f"interpolate backward: grad shape {tuple(g.shape)}, expected {x_shape[:2] + out}")
    return _c(g), x_shape, mode, ac, scales  # the output size is g's


# ---------------------------------------------------------------------------
# elementwise, softmax, mse, dropout

MSE_REDUCTIONS = ("mean", "sum", "none")


def unary_forward(x):
    """y = f(x) elementwise, x any shape and floating dtype."""
    if x.dtype.kind != "f":
        raise ValueError(f"activation needs a floating input, got dtype {x.dtype}")
    return (_c(x),)


def unary_backward(g, x):
    """g·f'(x) elementwise."""
    _same_shape("activation backward", "grad", g, x)
    return _c(g, x.dtype), _c(x)


def _dim(op, x, dim):
    if dim is None:
        raise ValueError(f"{op}: dim must be given (tensor shape {tuple(x.shape)})")
    if not -x.ndim <= dim < max(x.ndim, 1):
        raise ValueError(f"{op}: dim {dim} out of range for shape {tuple(x.shape)}")
    return int(dim) % x.ndim


def softmax_forward(x, dim=None, log=False):
    """softmax (or log_softmax) of x along dim."""
    return x, _dim("log_softmax" if log else "softmax", x, dim), bool(log)


def softmax_backward(g, y, dim=None, log=False):
    """Gradient of softmax / log_softmax from the saved output y."""
    _same_shape("softmax backward", "grad", g, y, "output")
    return g, y, _dim("log_softmax" if log else "softmax", y, dim), bool(log)


def _mse(x, t, reduction):
    if reduction not in MSE_REDUCTIONS:
        raise ValueError(f"mse_loss: reduction must be one of {MSE_REDUCTIONS}, got {reduction!r}")
    if tuple(x.shape) != tuple(t.shape):
        raise ValueError(f"mse_loss: input shape {tuple(x.shape)} and target shape {tuple(t.shape)} differ")


def mse_loss_forward(x, t, reduction="mean"):
    """(x − t)², reduced by "mean", "sum" or "none"."""
    _mse(x, t, reduction)
    return _c(x), _c(t, x.dtype), reduction


def mse_loss_backward(g, x, t, reduction="mean"):
    """(gx, gt) of mse_loss; g a scalar for mean/sum, like x for none."""
    _mse(x, t, reduction)
    g = get_array_module(x).asarray(g)
    if reduction == "none":
        _same_shape("mse_loss backward", "grad", g, x)
    elif g.size != 1:
        raise ValueError(f"mse_loss backward: grad of a reduced loss must have one element, got shape {g.shape}")
    return _c(g.reshape(x.shape if reduction == "none" else ()), x.dtype), _c(x), _c(t, x.dtype), reduction


def dropout_forward(x, mask, p):
    """x·mask/(1 − p), mask boolean like x; p in [0, 1]."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: probability must be in [0, 1], got {p}")
    _same_shape("dropout", "mask", mask, x)
    return _c(x), _c(mask), float(p)


# ---------------------------------------------------------------------------
# linear


def _linear(x, w, b):
    if w.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {tuple(w.shape)}")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"linear: input shape {tuple(x.shape)} does not end in in_features={w.shape[1]} "
                         f"(weight shape {tuple(w.shape)})")
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"linear: bias shape {tuple(b.shape)} != ({w.shape[0]},) for weight shape {tuple(w.shape)}")


def linear_forward(x, w, b=None):
    """y = x wᵀ + b for x (..., K), w (N, K), b (N,) or None -> (..., N)."""
    _linear(x, w, b)
    return x, w, b


def linear_backward(g, x, w, need_x=True, need_w=True, need_b=True):
    """(gx, gw, gb) of linear for upstream g (..., N); None where not needed."""
    _linear(x, w, None)
    if tuple(g.shape) != tuple(x.shape[:-1]) + (w.shape[0],):
        raise ValueError(f"linear backward: grad shape {tuple(g.shape)} != output shape "
                         f"{tuple(x.shape[:-1]) + (w.shape[0],)}")
    return g, x, w, bool(need_x), bool(need_w), bool(need_b)
