"""Every row of the kernel table × every implementation column, through one harness (harness.py).

The specs below say, per forward/backward pair, how to draw inputs and how to call it and
torch; the four tests at the bottom run them all. Family files (test_conv.py ...) keep only
what is particular to one family (tiling, chunking, thread partitions, index rules, modules).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import npdiff.kernels as K
import npdiff.nn.functional as F
from npdiff.kernels.winograd import ERROR_FACTOR as WINOGRAD_ERROR_FACTOR
from npdiff.kernels import winograd4 as _winograd4
from tests.kernels.harness import Case, Spec, array, check_agreement, check_central_differences, close, columns, run

DTYPES = st.sampled_from([np.float32, np.float64])


def _rng(draw):
    return np.random.default_rng(draw(st.integers(0, 2**31)))


def _grads(names, grads, case):
    return {n: g for n, g in zip(names, grads) if case.arrays.get(n) is not None}


# -- conv2d, conv_transpose2d ---------------------------------------------------------


@st.composite
def _conv_case(draw, transposed):
    rng, dtype = _rng(draw), draw(DTYPES)
    groups = draw(st.sampled_from([1, 1, 2]))
    N, Cg, Og = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    if transposed:
        H, W = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        op = (draw(st.integers(0, s[0] - 1)), draw(st.integers(0, s[1] - 1)))
        assume((H - 1) * s[0] - 2 * p[0] + kh + op[0] >= 1 and (W - 1) * s[1] - 2 * p[1] + kw + op[1] >= 1)
        wshape, params = (groups * Cg, Og, kh, kw), dict(stride=s, padding=p, output_padding=op, groups=groups)
    else:
        H, W = draw(st.integers(max(1, kh - 2 * p[0]), 8)), draw(st.integers(max(1, kw - 2 * p[1]), 8))
        wshape, params = (groups * Og, Cg, kh, kw), dict(stride=s, padding=p, groups=groups)
    b = rng.standard_normal(groups * Og).astype(dtype) if draw(st.booleans()) else None
    return Case(dict(x=array(draw, rng, (N, groups * Cg, H, W), dtype), w=array(draw, rng, wshape, dtype), b=b),
                params)


def _conv_spec(transposed):
    name = "conv_transpose2d" if transposed else "conv2d"
    fwd, bwd = K.OPS[name + "_forward"], K.OPS[name + "_backward"]

    def forward(c):
        return fwd(c.arrays["x"], c.arrays["w"], c.arrays["b"], **c.params), None

    def backward(c, saved, g):
        return _grads("xwb", bwd(c.arrays["x"], c.arrays["w"], g, **c.params), c)

    def fixed(rng):
        x, b = rng.standard_normal((2, 4, 5, 6)), rng.standard_normal(6)
        if transposed:
            return Case(dict(x=x, w=rng.standard_normal((4, 3, 3, 2)), b=b),
                        dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2))
        return Case(dict(x=x, w=rng.standard_normal((6, 2, 3, 2)), b=b), dict(stride=(2, 1), padding=1, groups=2))

    def torch_fn(torch, t, p):
        f = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d
        return f(t["x"], t["w"], t["b"], **p)

    def terms(c):  # the longest sum: gx over (O, kh, kw) ≤ w.size, gw over (N, Ho, Wo) or (N, H, W) ≤ x.size
        return c.arrays["w"].size + c.arrays["x"].size

    z = np.zeros
    bad = [(lambda: F.conv2d(z((3, 8, 8)), z((4, 3, 3, 3))), r"4-D.*\(3, 8, 8\)"),
           (lambda: F.conv2d(z((1, 3, 8, 8)), z((4, 2, 3, 3))), r"\(1, 3, 8, 8\).*\(4, 2, 3, 3\)"),
           (lambda: F.conv2d(z((1, 3, 8, 8)), z((4, 1, 3, 3)), groups=2), r"groups=2"),
           (lambda: F.conv2d(z((1, 3, 8, 8)), z((4, 3, 3, 3)), padding=-1), r"padding"),
           (lambda: F.conv2d(z((1, 3, 2, 2)), z((4, 3, 3, 3))), r"output size"),
           (lambda: F.conv2d(z((1, 3, 8, 8)), z((4, 3, 3, 3)), z(5)), r"bias shape \(5,\)"),
           (lambda: F.conv2d(z((1, 3, 8, 8), np.float32), z((4, 3, 3, 3))), r"dtype"),
           (lambda: K.conv2d_backward(z((1, 3, 8, 8)), z((4, 3, 3, 3)), z((1, 4, 5, 5))), r"grad shape \(1, 4, 5, 5\)")]
    if transposed:
        bad = [(lambda: F.conv_transpose2d(z((1, 3, 8, 8)), z((4, 3, 3, 3))), r"\(1, 3, 8, 8\).*\(4, 3, 3, 3\)"),
               (lambda: F.conv_transpose2d(z((1, 3, 4, 4)), z((3, 2, 3, 3)), stride=2, output_padding=2),
                r"output_padding"),
               (lambda: F.conv_transpose2d(z((1, 3, 1, 1)), z((3, 2, 1, 1)), padding=1), r"output size")]
    # the winograd columns' error bounds are their transforms' factors times the direct sum's (winograd.py,
    # winograd4.py: the larger of the forward's and the weight gradient's for F(4×4, 3×3))
    w4 = max(_winograd4.ERROR_FACTOR, _winograd4.WEIGHT_GRAD_ERROR_FACTOR)
    return Spec(name, (fwd.name, bwd.name), _conv_case(transposed), forward, backward, fixed, torch_fn, terms, bad,
                column_terms={"winograd": WINOGRAD_ERROR_FACTOR, "winograd4": w4, "winograd4_microgemm": w4})


# -- norms ----------------------------------------------------------------------------------


@st.composite
def _nchw(draw, min_spatial=0):
    rng, dtype = _rng(draw), draw(DTYPES)
    G = draw(st.integers(1, 3))
    shape = (draw(st.integers(1, 3)), G * draw(st.integers(1, 3))) + tuple(
        draw(st.lists(st.integers(1, 5), min_size=min_spatial, max_size=2)))
    x = array(draw, rng, shape, dtype, scale=draw(st.sampled_from([1.0, 30.0]))) + draw(st.sampled_from([0.0, 5.0]))
    affine = draw(st.booleans())
    wb = [rng.standard_normal(shape[1]).astype(dtype) if affine else None for _ in range(2)]
    return rng, x.astype(dtype), G, wb


@st.composite
def _group_norm_case(draw):
    rng, x, G, (w, b) = draw(_nchw())
    return Case(dict(x=x, weight=w, bias=b), dict(num_groups=G, eps=1e-5))


@st.composite
def _layer_norm_case(draw):
    rng, x, _, _ = draw(_nchw())
    ns = x.shape[x.ndim - draw(st.integers(1, x.ndim)):]
    affine = draw(st.booleans())
    w, b = [rng.standard_normal(ns).astype(x.dtype) if affine else None for _ in range(2)]
    return Case(dict(x=x, weight=w, bias=b), dict(normalized_shape=ns, eps=1e-5))


@st.composite
def _batch_norm_case(draw):
    rng, x, _, (w, b) = draw(_nchw(min_spatial=1))
    training = draw(st.booleans())
    C = x.shape[1]
    assume(not training or x.size > C)  # batch statistics need two values per channel
    rm = rng.standard_normal(C).astype(x.dtype)
    rv = (rng.random(C) + 0.5).astype(x.dtype)
    return Case(dict(x=x, weight=w, bias=b), dict(running_mean=rm, running_var=rv, training=training, eps=1e-5))


def _norm_spec(name, draw, fixed, torch_fn, bad):
    fwd, bwd = K.OPS[name + "_forward"], K.OPS[name + "_backward"]
    a = "num_groups" if name.startswith("group_norm") else "normalized_shape"

    def forward(c):
        x, w, b = c.arrays["x"], c.arrays["weight"], c.arrays["bias"]
        if name == "batch_norm":
            p = c.params
            y, mean, rstd, _ = fwd(x, w, b, p["running_mean"], p["running_var"], p["training"], p["eps"])
            return y, (mean, rstd)
        y, mean, rstd = fwd(x, c.params[a], w, b, c.params["eps"])
        return y, (mean, rstd)

    def backward(c, saved, g):
        x, w = c.arrays["x"], c.arrays["weight"]
        if name == "batch_norm":
            return _grads(("x", "weight", "bias"), bwd(g, x, *saved, w, c.params["training"]), c)
        if name == "group_norm_silu":  # the backward recomputes z = group_norm(x), which needs the bias
            return _grads(("x", "weight", "bias"), bwd(g, x, *saved, c.params[a], w, c.arrays["bias"]), c)
        return _grads(("x", "weight", "bias"), bwd(g, x, *saved, c.params[a], w), c)

    def terms(c):
        # statistics over at most the whole array, mean and variance chained; dx's summands are
        # ρ·ĝ in size (ρ up to 1/√ε for a constant set, where dx is 0 in exact arithmetic)
        with K.use("reference"):
            rstd = np.asarray(forward(c)[1][1], np.float64)
        return c.arrays["x"].size * 4 * max(1.0, float(rstd.max()))

    return Spec(name, (fwd.name, bwd.name), draw, forward, backward, fixed, torch_fn, terms, bad)


def _gn_fixed(rng):
    return Case(dict(x=rng.standard_normal((2, 6, 3, 2)), weight=rng.standard_normal(6), bias=rng.standard_normal(6)),
                dict(num_groups=3, eps=1e-5))


def _ln_fixed(rng):
    return Case(dict(x=rng.standard_normal((2, 3, 4)), weight=rng.standard_normal((3, 4)),
                     bias=rng.standard_normal((3, 4))), dict(normalized_shape=(3, 4), eps=1e-5))


def _bn_fixed(rng, training=True):
    return Case(dict(x=rng.standard_normal((3, 4, 2, 3)), weight=rng.standard_normal(4), bias=rng.standard_normal(4)),
                dict(running_mean=rng.standard_normal(4), running_var=rng.random(4) + 0.5, training=training, eps=1e-5))


def _bn_torch(torch, t, p):
    rm, rv = (torch.tensor(np.array(p[k])) for k in ("running_mean", "running_var"))  # torch updates copies
    return torch.nn.functional.batch_norm(t["x"], rm, rv, t["weight"], t["bias"], p["training"], eps=p["eps"])


z = np.zeros
NORMS = [
    _norm_spec("group_norm", _group_norm_case(), _gn_fixed,
               lambda torch, t, p: torch.nn.functional.group_norm(t["x"], p["num_groups"], t["weight"], t["bias"],
                                                                  p["eps"]),
               [(lambda: F.group_norm(z((2, 6, 3)), 4), r"\(2, 6, 3\)"), (lambda: F.group_norm(z(6), 3), r"\(6,\)"),
                (lambda: F.group_norm(z((2, 6, 3)), 3, np.ones(5)), r"\(5,\)"),
                (lambda: K.group_norm_backward(z((2, 6)), z((2, 6, 3)), z((2, 3)), z((2, 3)), 3),
                 r"grad shape \(2, 6\)")]),
    _norm_spec("group_norm_silu", _group_norm_case(), _gn_fixed,
               lambda torch, t, p: torch.nn.functional.silu(torch.nn.functional.group_norm(
                   t["x"], p["num_groups"], t["weight"], t["bias"], p["eps"])),
               [(lambda: F.group_norm_silu(z((2, 6, 3)), 4), r"\(2, 6, 3\)"),
                (lambda: F.group_norm_silu(z((2, 6, 3)), 3, None, np.ones(5)), r"bias.*\(5,\)"),
                (lambda: K.group_norm_silu_backward(z((2, 6)), z((2, 6, 3)), z((2, 3)), z((2, 3)), 3),
                 r"grad shape \(2, 6\)")]),
    _norm_spec("layer_norm", _layer_norm_case(), _ln_fixed,
               lambda torch, t, p: torch.nn.functional.layer_norm(t["x"], p["normalized_shape"], t["weight"],
                                                                  t["bias"], p["eps"]),
               [(lambda: F.layer_norm(z((2, 6, 3)), (6,)), r"\(2, 6, 3\)"),
                (lambda: F.layer_norm(z((2, 6, 3)), 3, np.ones(4)), r"\(4,\)")]),
    _norm_spec("batch_norm", _batch_norm_case(), _bn_fixed, _bn_torch,
               [(lambda: F.batch_norm(z((2, 6, 3)), z(5), np.ones(5)), r"\(5,\)"),
                (lambda: F.batch_norm(z((1, 6, 1)), None, None, training=True), r"\(1, 6, 1\)"),
                (lambda: F.batch_norm(z((2, 6, 3)), None, None), r"running_mean"),
                (lambda: F.batch_norm(z((2, 6, 3)), z(6), None, training=True), r"both")]),
]


# -- attention ------------------------------------------------------------------------------


@st.composite
def _attention_case(draw, max_lq=7, max_lk=9):
    rng, dtype = _rng(draw), draw(DTYPES)
    lead = tuple(draw(st.lists(st.integers(1, 2), min_size=1, max_size=2)))
    N = math.prod(lead)
    Lq, Lk = draw(st.integers(1, max_lq)), draw(st.integers(1, max_lk))
    d = draw(st.sampled_from([1, 3, 8, 17]))
    dv = draw(st.sampled_from([d, 2]))
    q = array(draw, rng, lead + (Lq, d), dtype, scale=draw(st.sampled_from([1.0, 4.0])))
    k, v = array(draw, rng, lead + (Lk, d), dtype), array(draw, rng, lead + (Lk, dv), dtype)
    kind = draw(st.sampled_from(["none", "bool", "float"]))
    bias = index = None
    if kind != "none":
        M = draw(st.sampled_from([1, N]))
        if kind == "bool":
            keep = rng.random((M, Lq, Lk)) < 0.7
            keep[:, 0, :] = draw(st.booleans())  # sometimes a fully masked row
            bias = np.where(keep, 0, -np.inf).astype(dtype)
        else:
            bias = rng.standard_normal((M, Lq, Lk)).astype(dtype)
        index = np.arange(N) % M
    return Case(dict(q=q, k=k, v=v), dict(bias=bias, bias_index=index, scale=draw(st.sampled_from([None, 0.3]))))


def _attention_forward(c):
    out, lse = K.attention_forward(c.arrays["q"], c.arrays["k"], c.arrays["v"], **c.params)
    return out, (out, lse)


def _attention_backward(c, saved, g):
    return _grads("qkv", K.attention_backward(g, c.arrays["q"], c.arrays["k"], c.arrays["v"], *saved, **c.params), c)


def _attention_fixed(rng):
    return Case(dict(q=rng.standard_normal((2, 2, 3, 4)), k=rng.standard_normal((2, 2, 5, 4)),
                     v=rng.standard_normal((2, 2, 5, 3))),
                dict(bias=rng.standard_normal((2, 3, 5)), bias_index=np.array([0, 1, 1, 0]), scale=0.7))


def _attention_torch(torch, t, p):
    mask = torch.tensor(p["bias"][p["bias_index"]].reshape(t["q"].shape[:-1] + (t["k"].shape[-2],)))
    return torch.nn.functional.scaled_dot_product_attention(t["q"], t["k"], t["v"], attn_mask=mask, scale=p["scale"])


_q, _k, _v = z((2, 3, 4)), z((2, 5, 4)), z((2, 5, 6))
ATTENTION = Spec(
    "attention", ("attention_forward", "attention_backward"), _attention_case(), _attention_forward,
    _attention_backward, _attention_fixed, _attention_torch,
    # sums over keys or queries of d- or dv-long products; ×8: exp and 1/l carry |S|·ε
    lambda c: 8 * (c.arrays["q"].shape[-2] + c.arrays["k"].shape[-2]) * (c.arrays["q"].shape[-1]
                                                                         + c.arrays["v"].shape[-1] + 4),
    [(lambda: F.scaled_dot_product_attention(_q, z((2, 5, 3)), _v), r"\(2, 5, 3\)"),
     (lambda: F.scaled_dot_product_attention(_q, _k, z((2, 4, 6))), r"\(2, 4, 6\)"),
     (lambda: F.scaled_dot_product_attention(_q, z((3, 5, 4)), z((3, 5, 6))), "batch dims"),
     (lambda: F.scaled_dot_product_attention(z(4), z(4), z(4)), "rank"),
     (lambda: F.scaled_dot_product_attention(_q, _k, _v, attn_mask=np.ones((3, 4), bool)), r"\(3, 4\)"),
     (lambda: F.scaled_dot_product_attention(z((2, 0, 4)), _k, _v), "empty"),
     (lambda: K.attention_forward(_q, _k, _v, z((1, 3, 4)), np.zeros(2, int)), r"\(M, 3, 5\)"),
     (lambda: K.attention_forward(_q, _k, _v, z((1, 3, 5)), np.zeros(3, int)), "N = 2")])


# -- pooling and interpolation --------------------------------------------------------------


@st.composite
def _image(draw, ties=False):
    rng, dtype = _rng(draw), draw(DTYPES)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    x = array(draw, rng, shape, dtype)
    return np.round(x) if ties and draw(st.booleans()) else x  # ties: the first maximum must win


@st.composite
def _pool_case(draw, ties):
    x = draw(_image(ties))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    assume((x.shape[2] + 2 * p[0] - k[0]) // s[0] + 1 > 0 and (x.shape[3] + 2 * p[1] - k[1]) // s[1] + 1 > 0)
    params = dict(kernel_size=k, stride=s, padding=p)
    if not ties:
        params["count_include_pad"] = draw(st.booleans())
    return Case(dict(x=x), params)


def _max_forward(c):
    out, arg = K.max_pool2d_forward(c.arrays["x"], **c.params)
    return out, arg


def _max_backward(c, arg, g):
    return dict(x=K.max_pool2d_backward(g, arg, c.arrays["x"].shape))


def _avg_forward(c):
    return K.avg_pool2d_forward(c.arrays["x"], **c.params), None


def _avg_backward(c, saved, g):
    return dict(x=K.avg_pool2d_backward(g, c.arrays["x"].shape, **c.params))


def _pool_fixed(rng, cip=None):
    params = dict(kernel_size=3, stride=2, padding=1)
    if cip is not None:
        params.update(kernel_size=(3, 2), stride=(2, 1), count_include_pad=cip)
    return Case(dict(x=rng.standard_normal((2, 2, 7, 6))), params)


@st.composite
def _interp_case(draw):
    x = draw(_image())
    mode = draw(st.sampled_from(["nearest", "bilinear"]))
    how = draw(st.sampled_from([dict(size=(draw(st.integers(1, 12)), draw(st.integers(1, 12)))),
                                dict(scale_factor=draw(st.sampled_from([2, 3, 1.7, (0.5, 2.5)])))]))
    ac = None if mode == "nearest" else draw(st.booleans())
    out = how.get("size") or (int(x.shape[2] * np.atleast_1d(how["scale_factor"])[0]),
                              int(x.shape[3] * np.atleast_1d(how["scale_factor"])[-1]))
    assume(min(out) >= 1)
    return Case(dict(x=x), dict(how, mode=mode, align_corners=ac))


def _interp_forward(c):
    return K.interpolate_forward(c.arrays["x"], **c.params), None


def _interp_backward(c, saved, g):
    return dict(x=K.interpolate_backward(g, c.arrays["x"].shape, **c.params))


_x4 = z((1, 1, 4, 4))
POOLING = [
    Spec("max_pool2d", ("max_pool2d_forward", "max_pool2d_backward"), _pool_case(ties=True), _max_forward,
         _max_backward, _pool_fixed, lambda torch, t, p: torch.nn.functional.max_pool2d(t["x"], **p), 4,
         [(lambda: F.max_pool2d(z((2, 3, 4)), 2), r"\(2, 3, 4\)"), (lambda: F.max_pool2d(_x4, 0), r"kernel \(0, 0\)"),
          (lambda: F.max_pool2d(_x4, 2, -1), r"stride \(-1, -1\)")]),
    Spec("avg_pool2d", ("avg_pool2d_forward", "avg_pool2d_backward"), _pool_case(ties=False), _avg_forward,
         _avg_backward, lambda rng: _pool_fixed(rng, cip=False),
         lambda torch, t, p: torch.nn.functional.avg_pool2d(t["x"], **p), 16,
         [(lambda: F.avg_pool2d(_x4, 2, 2, 2), r"padding \(2, 2\)"),
          (lambda: F.avg_pool2d(z((1, 1, 2, 2)), 3), r"\(1, 1, 2, 2\)")]),
    Spec("interpolate", ("interpolate_forward", "interpolate_backward"), _interp_case(), _interp_forward,
         _interp_backward, lambda rng: Case(dict(x=rng.standard_normal((1, 2, 5, 4))),
                                            dict(size=(9, 7), mode="bilinear", align_corners=False)),
         lambda torch, t, p: torch.nn.functional.interpolate(t["x"], **p),
         600,  # one input pixel gathers up to 24×24 outputs' gradients (1×1 → 24×24)
         [(lambda: F.interpolate(z((1, 1, 4)), scale_factor=2), r"\(1, 1, 4\)"),
          (lambda: F.interpolate(_x4, size=(0, 3)), r"\(0, 3\)"),
          (lambda: F.interpolate(_x4, size=2, scale_factor=2), "exactly one"),
          (lambda: F.interpolate(_x4, scale_factor=2, mode="bicubic"), "bicubic"),
          (lambda: F.interpolate(_x4, scale_factor=2, align_corners=True), "align_corners")],
         oracle_dtype=np.float32),  # torch's nearest index rule is float32 arithmetic
]


# -- elementwise, softmax, mse, dropout, linear ---------------------------------------------


@st.composite
def _elementwise_case(draw, min_dims=1):
    rng, dtype = _rng(draw), draw(DTYPES)
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=min_dims, max_size=3)))
    return rng, array(draw, rng, shape, dtype, scale=draw(st.sampled_from([1.0, 5.0, 20.0])))


def _activation_spec(name, torch_fn):
    fwd, bwd = K.OPS[name + "_forward"], K.OPS[name + "_backward"]

    @st.composite
    def draw(draw_):
        return Case(dict(x=draw_(_elementwise_case())[1]))

    def fixed(rng):
        x = rng.standard_normal((3, 4)) * 2
        x[np.abs(x) < 1e-3] = 0.5  # away from relu's kink
        return Case(dict(x=x))

    return Spec(name, (fwd.name, bwd.name), draw(), lambda c: (fwd(c.arrays["x"]), None),
                lambda c, s, g: dict(x=bwd(g, c.arrays["x"])), fixed, lambda torch, t, p: torch_fn(torch)(t["x"]), 8,
                [(lambda: fwd(np.zeros(3, int)), "floating"), (lambda: bwd(z(2), z(3)), r"grad shape \(2,\)")])


ACTIVATIONS = [
    _activation_spec("relu", lambda torch: torch.relu), _activation_spec("sigmoid", lambda torch: torch.sigmoid),
    _activation_spec("silu", lambda torch: torch.nn.functional.silu),
    _activation_spec("gelu", lambda torch: torch.nn.functional.gelu),
    _activation_spec("gelu_tanh", lambda torch: lambda a: torch.nn.functional.gelu(a, approximate="tanh")),
]


@st.composite
def _softmax_case(draw):
    _, x = draw(_elementwise_case())
    return Case(dict(x=x), dict(dim=draw(st.integers(-x.ndim, x.ndim - 1)), log=draw(st.booleans())))


def _softmax_forward(c):
    y = K.softmax_forward(c.arrays["x"], **c.params)
    return y, y


def _softmax_torch(torch, t, p):
    return (torch.log_softmax if p["log"] else torch.softmax)(t["x"], p["dim"])


@st.composite
def _mse_case(draw):
    rng, x = draw(_elementwise_case())
    return Case(dict(x=x, t=rng.standard_normal(x.shape).astype(x.dtype)),
                dict(reduction=draw(st.sampled_from(["mean", "sum", "none"]))))


@st.composite
def _dropout_case(draw):
    rng, x = draw(_elementwise_case())
    p = draw(st.sampled_from([0.0, 0.3, 1.0]))
    return Case(dict(x=x), dict(mask=rng.random(x.shape) >= p, p=p))


@st.composite
def _linear_case(draw):
    rng, dtype = _rng(draw), draw(DTYPES)
    lead = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    k, n = draw(st.integers(1, 7)), draw(st.integers(1, 5))
    b = rng.standard_normal(n).astype(dtype) if draw(st.booleans()) else None
    return Case(dict(x=array(draw, rng, lead + (k,), dtype), w=array(draw, rng, (n, k), dtype), b=b))


OTHERS = [
    Spec("softmax", ("softmax_forward", "softmax_backward"), _softmax_case(), _softmax_forward,
         lambda c, y, g: dict(x=K.softmax_backward(g, y, **c.params)),
         lambda rng: Case(dict(x=rng.standard_normal((3, 4)) * 2), dict(dim=0, log=True)), _softmax_torch,
         lambda c: 4 * c.arrays["x"].shape[c.params["dim"]],
         [(lambda: F.softmax(z((2, 3)), 2), r"dim 2 .*\(2, 3\)"), (lambda: F.log_softmax(z((2, 3))), "dim must be given")]),
    Spec("mse_loss", ("mse_loss_forward", "mse_loss_backward"), _mse_case(),
         lambda c: (K.mse_loss_forward(c.arrays["x"], c.arrays["t"], **c.params), None),
         lambda c, s, g: _grads("xt", K.mse_loss_backward(g, c.arrays["x"], c.arrays["t"], **c.params), c),
         lambda rng: Case(dict(x=rng.standard_normal((2, 3)), t=rng.standard_normal((2, 3))), dict(reduction="mean")),
         lambda torch, t, p: torch.nn.functional.mse_loss(t["x"], t["t"], **p), lambda c: 4 * c.arrays["x"].size,
         [(lambda: F.mse_loss(z((2, 3)), z((3, 2))), r"\(2, 3\).*\(3, 2\)"),
          (lambda: F.mse_loss(z((2, 3)), z((2, 3)), reduction="avg"), "reduction")]),
    Spec("dropout", ("dropout_forward",), _dropout_case(),
         lambda c: (K.dropout_forward(c.arrays["x"], **c.params), None),
         lambda c, s, g: dict(x=K.dropout_forward(g, **c.params)),
         lambda rng: Case(dict(x=rng.standard_normal((4, 5))), dict(mask=rng.random((4, 5)) > 0.3, p=0.3)),
         lambda torch, t, p: t["x"] * torch.tensor(p["mask"]) / (1 - p["p"]), 2,
         [(lambda: F.dropout(z((2, 3)), p=1.5), "probability"), (lambda: K.dropout_forward(z(3), z(2, bool), 0.5),
                                                                  r"mask shape \(2,\)")]),
    Spec("linear", ("linear_forward", "linear_backward"), _linear_case(),
         lambda c: (K.linear_forward(c.arrays["x"], c.arrays["w"], c.arrays["b"]), None),
         lambda c, s, g: _grads("xwb", K.linear_backward(g, c.arrays["x"], c.arrays["w"]), c),
         lambda rng: Case(dict(x=rng.standard_normal((2, 3, 4)), w=rng.standard_normal((5, 4)),
                               b=rng.standard_normal(5))),
         lambda torch, t, p: torch.nn.functional.linear(t["x"], t["w"], t["b"]),
         lambda c: 4 * max(c.arrays["x"].shape[-1], int(np.prod(c.arrays["x"].shape[:-1]))),
         [(lambda: F.linear(z((2, 3)), z(3)), "2-D"), (lambda: F.linear(z((2, 3)), z((4, 2))), "in_features=2"),
          (lambda: F.linear(z((2, 3)), z((4, 3)), z(3)), r"bias shape \(3,\)")]),
]

SPECS = [_conv_spec(False), _conv_spec(True)] + NORMS + [ATTENTION] + POOLING + ACTIVATIONS + OTHERS
CASES = [(spec, col) for spec in SPECS for col in columns(spec)]


def test_every_row_of_the_table_is_covered():
    covered = {row for spec in SPECS for row in spec.rows}
    assert covered == set(K.OPS), sorted(set(K.OPS) ^ covered)
    assert all({"reference", "numba", "cuda", "xp"} <= set(op.columns) for op in K.OPS.values())


@pytest.mark.parametrize("spec", SPECS, ids=repr)
@given(data=st.data())
def test_columns_agree_with_the_reference(spec, data):
    """numba and xp (and cuda where it can run) against the reference over generated shapes,
    same output dtype and shape."""
    case = data.draw(spec.draw)
    reference = run(spec, case, "reference")
    for column in set(columns(spec)) - {"reference"}:
        check_agreement(spec, case, column, reference)


@pytest.mark.parametrize("spec,column", CASES, ids=lambda v: repr(v) if isinstance(v, Spec) else v)
def test_central_differences(spec, column):
    """float64: each column's backward is the derivative of its own forward."""
    with K.use(column):
        check_central_differences(spec, spec.fixed(np.random.default_rng(5)))


@pytest.mark.parametrize("spec,column", CASES, ids=lambda v: repr(v) if isinstance(v, Spec) else v)
def test_torch_oracle(spec, column):
    torch = pytest.importorskip("torch", reason="torch is the oracle for the kernel table")
    case = spec.fixed(np.random.default_rng(7)).astype(spec.oracle_dtype)
    tensors = {k: None if a is None else torch.tensor(a, requires_grad=True) for k, a in case.arrays.items()}
    yt = spec.torch(torch, tensors, case.params)
    y, grads = run(spec, case, column)
    g = np.random.default_rng(0).standard_normal(np.shape(y)).astype(case.dtype).reshape(np.shape(y))
    yt.backward(torch.tensor(g))
    terms = (spec.terms(case) if callable(spec.terms) else spec.terms) * spec.column_terms.get(column, 1)
    close(y, yt.detach().numpy(), case.dtype, 4 * terms, f"{spec.name} {column} forward vs torch")
    for name, t in tensors.items():
        if t is not None:
            close(grads[name], t.grad.numpy(), case.dtype, 4 * terms, f"{spec.name} {column} d/d{name} vs torch")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_bad_input_names_what_is_wrong(spec):
    assert spec.bad, f"{spec.name} has no bad-input cases"
    for column in ("reference", "fast"):  # the check runs before any column
        with K.use(column):
            for call, match in spec.bad:
                with pytest.raises(ValueError, match=match):
                    call()


def test_switch_picks_the_column():
    x = np.linspace(-2, 2, 7)
    calls = []
    op = K.OPS["relu_forward"]
    saved = dict(op.columns)
    try:
        for col in saved:
            op.columns[col] = (lambda c: lambda a: calls.append(c) or saved[c](a))(col)
        F.relu(x)
        with K.use("reference"):
            F.relu(x)
            with K.use("xp"):
                F.relu(x)
            F.relu(x)
        assert calls == ["numba", "reference", "xp", "reference"]
    finally:
        op.columns.update(saved)
    with pytest.raises(ValueError, match="mode"):
        with K.use("fastest"):
            pass
