"""Pooling/upsampling family: reference vs fast vs xp, central differences, torch oracle, bad input."""

import re

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import npdiff as nd
import npdiff.nn as nn
import npdiff.nn.functional as F
from npdiff.kernels import pooling as K
from tests.gradcheck import check_gradients

TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}


def close(a, b, dtype):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), **TOL[dtype])


@st.composite
def images(draw):
    """x (N, C, H, W): batch 1-2, 1-3 channels, odd and non-square sizes, sometimes a
    transposed or strided view, sometimes with tied values (a coarse grid of levels)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    if layout == "transposed":
        x = rng.standard_normal(shape[:2] + shape[:1:-1]).swapaxes(2, 3)
    elif layout == "strided":
        x = rng.standard_normal(shape[:3] + (2 * shape[3],))[..., ::2]
    else:
        x = rng.standard_normal(shape)
    if draw(st.booleans()):
        x = np.round(x)  # many ties: the first maximum must win everywhere
    return x.astype(dtype)


@st.composite
def windows(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    return k, s, p


def _fits(x, k, s, p):
    Ho, Wo = K.pool_output_size(x.shape[2], x.shape[3], k, s, p)
    return Ho > 0 and Wo > 0


@given(images(), windows())
def test_max_pool_fast_and_xp_match_reference(x, win):
    k, s, p = win
    assume(_fits(x, k, s, p))
    out, arg = K.max_pool2d_forward_reference(x, k, s, p)
    g = np.random.default_rng(0).standard_normal(out.shape).astype(x.dtype)
    dx = K.max_pool2d_backward_reference(g, arg, x.shape)
    for fwd, bwd in ((K.max_pool2d_forward, K.max_pool2d_backward), (K.max_pool2d_forward_xp, K.max_pool2d_backward_xp)):
        o, a = fwd(x, k, s, p)
        np.testing.assert_array_equal(o, out)
        np.testing.assert_array_equal(a, arg)
        close(bwd(g, a, x.shape), dx, x.dtype.type)


@given(images(), windows(), st.booleans())
def test_avg_pool_fast_and_xp_match_reference(x, win, include_pad):
    k, s, p = win
    assume(_fits(x, k, s, p))
    out = K.avg_pool2d_forward_reference(x, k, s, p, include_pad)
    g = np.random.default_rng(0).standard_normal(out.shape).astype(x.dtype)
    dx = K.avg_pool2d_backward_reference(g, x.shape, k, s, p, include_pad)
    for fwd, bwd in ((K.avg_pool2d_forward, K.avg_pool2d_backward), (K.avg_pool2d_forward_xp, K.avg_pool2d_backward_xp)):
        close(fwd(x, k, s, p, include_pad), out, x.dtype.type)
        close(bwd(g, x.shape, k, s, p, include_pad), dx, x.dtype.type)


MODES = [("nearest", None), ("bilinear", False), ("bilinear", True)]


@given(images(), st.sampled_from(MODES), st.one_of(
    st.tuples(st.integers(1, 12), st.integers(1, 12)).map(lambda s: dict(size=s)),
    st.sampled_from([2, 3, 0.5, 1.5, 1.7, (2, 0.75)]).map(lambda f: dict(scale_factor=f))))
def test_interpolate_fast_and_xp_match_reference(x, mode_ac, how):
    mode, ac = mode_ac
    f = how.get("scale_factor", 1)
    fh, fw = f if isinstance(f, tuple) else (f, f)
    assume(int(x.shape[2] * fh) > 0 and int(x.shape[3] * fw) > 0)  # a zero-size output is a ValueError
    size, scales = K.interpolate_size(x.shape, how.get("size"), how.get("scale_factor"))
    out = K.interpolate_forward_reference(x, size, mode, bool(ac), scales)
    g = np.random.default_rng(0).standard_normal(out.shape).astype(x.dtype)
    dx = K.interpolate_backward_reference(g, x.shape, mode, bool(ac), scales)
    close(K.interpolate_forward(x, mode=mode, align_corners=ac, **how), out, x.dtype.type)
    close(K.interpolate_backward(g, x.shape, mode=mode, align_corners=ac, **how), dx, x.dtype.type)
    close(K.interpolate_forward_xp(x, size, mode, bool(ac), scales), out, x.dtype.type)
    close(K.interpolate_backward_xp(g, x.shape, mode, bool(ac), scales), dx, x.dtype.type)


def test_nearest_index_rule_is_floor_of_dst_times_in_over_out():
    # 3 → 7 by size: src = ⌊d·3/7⌋;  2 → 4 by scale 2: src = d // 2
    np.testing.assert_array_equal(K.nearest_source_index(3, 7), [0, 0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(K.nearest_source_index(2, 4, 2.0), [0, 0, 1, 1])


def test_central_differences():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 7, 6)).swapaxes(2, 3)  # distinct values: max pool is differentiable
    check_gradients(lambda x: F.max_pool2d(x, 3, 2, 1), [x])
    check_gradients(lambda x: F.avg_pool2d(x, (3, 2), (2, 1), (1, 1), count_include_pad=False), [x])
    check_gradients(lambda x: F.avg_pool2d(x, 2), [x])
    for mode, ac in MODES:
        check_gradients(lambda x: F.interpolate(x, size=(9, 4), mode=mode, align_corners=ac), [x])
        check_gradients(lambda x: F.interpolate(x, scale_factor=2, mode=mode, align_corners=ac), [x])


# -- torch oracle -------------------------------------------------------------


def _oracle(torch, ours_f, torch_f, x):
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_f(xt)
    g = np.random.default_rng(2).standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(g))
    xo = nd.tensor(x, requires_grad=True)
    yo = ours_f(xo)
    yo.backward(g)
    np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_torch_oracle_pooling():
    torch = pytest.importorskip("torch", reason="torch is the oracle for the pooling kernels")
    tf = torch.nn.functional
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    ties = np.round(x)
    for k, s, p in [(2, 2, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 0)), (4, 3, 2), (5, 1, 2)]:
        for data in (x, ties):
            _oracle(torch, lambda t: F.max_pool2d(t, k, s, p), lambda t: tf.max_pool2d(t, k, s, p), data)
        for cip in (True, False):
            _oracle(torch, lambda t: F.avg_pool2d(t, k, s, p, count_include_pad=cip),
                    lambda t: tf.avg_pool2d(t, k, s, p, count_include_pad=cip), x)
    _oracle(torch, nn.MaxPool2d(2), torch.nn.MaxPool2d(2), x)
    _oracle(torch, nn.AvgPool2d(3, 2, 1), torch.nn.AvgPool2d(3, 2, 1), x)


def test_torch_oracle_interpolate_exact_indices():
    torch = pytest.importorskip("torch", reason="torch is the oracle for interpolate")
    tf = torch.nn.functional
    x = np.random.default_rng(4).standard_normal((1, 2, 7, 5)).astype(np.float32)
    hows = [dict(scale_factor=2), dict(scale_factor=3), dict(scale_factor=1.7), dict(scale_factor=(0.5, 2.5)),
            dict(size=(13, 6)), dict(size=(3, 11)), dict(size=(29, 1)), dict(size=(7, 5))]
    for how in hows:
        for mode, ac in MODES:
            _oracle(torch, lambda t: F.interpolate(t, mode=mode, align_corners=ac, **how),
                    lambda t: tf.interpolate(t, mode=mode, align_corners=ac, **how), x)
    # nearest picks exactly torch's source pixel for many size pairs (float32 index rule)
    for h_in in range(1, 12):
        for h_out in range(1, 40):
            a = np.arange(h_in, dtype=np.float32).reshape(1, 1, h_in, 1)
            ours = K.interpolate_forward(a, size=(h_out, 1))
            theirs = tf.interpolate(torch.tensor(a), size=(h_out, 1)).numpy()
            np.testing.assert_array_equal(ours, theirs)
    _oracle(torch, nn.Upsample(scale_factor=2), torch.nn.Upsample(scale_factor=2), x)
    _oracle(torch, nn.Upsample(size=(4, 9), mode="bilinear", align_corners=True),
            torch.nn.Upsample(size=(4, 9), mode="bilinear", align_corners=True), x)


# -- bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: F.max_pool2d(np.zeros((2, 3, 4)), 2), "(2, 3, 4)"),
        (lambda: F.max_pool2d(np.zeros((1, 1, 4, 4)), 0), "kernel (0, 0)"),
        (lambda: F.max_pool2d(np.zeros((1, 1, 4, 4)), 2, -1), "stride (-1, -1)"),
        (lambda: F.avg_pool2d(np.zeros((1, 1, 4, 4)), 2, 2, 2), "padding (2, 2)"),
        (lambda: F.avg_pool2d(np.zeros((1, 1, 2, 2)), 3), "(1, 1, 2, 2)"),
        (lambda: F.interpolate(np.zeros((1, 1, 4)), scale_factor=2), "(1, 1, 4)"),
        (lambda: F.interpolate(np.zeros((1, 1, 4, 4)), size=(0, 3)), "(0, 3)"),
        (lambda: F.interpolate(np.zeros((1, 1, 4, 4)), size=2, scale_factor=2), "exactly one"),
        (lambda: F.interpolate(np.zeros((1, 1, 4, 4)), scale_factor=2, mode="bicubic"), "bicubic"),
        (lambda: F.interpolate(np.zeros((1, 1, 4, 4)), scale_factor=2, align_corners=True), "align_corners"),
    ],
)
def test_bad_input_raises_value_error_naming_the_shapes(call, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        call()
