"""Norm family: reference vs fast vs xp, central differences, torch oracle, bad input."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npdiff as nd
import npdiff.nn as nn
import npdiff.nn.functional as F
from npdiff import kernels as KT
from npdiff.kernels import norm as K
from tests.gradcheck import check_gradients

TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}


def close(a, b, dtype):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), **TOL[dtype])


@st.composite
def nchw(draw, dtype=None):
    """(x, g, weight, bias, num_groups): batch 1-3, groups 1-3 of 1-3 channels, odd/non-square
    spatial sizes (or none: (N, C) and (N, C, L) inputs), sometimes a non-contiguous view."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    dtype = dtype or draw(st.sampled_from([np.float32, np.float64]))
    N, G, Cg = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    spatial = draw(st.sampled_from([(), (5,), (1, 1), (3, 4), (5, 2), (4, 7)]))
    shape = (N, G * Cg) + spatial
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    if layout == "transposed" and len(spatial) == 2:
        x = rng.standard_normal(shape[:2] + spatial[::-1]).astype(dtype).swapaxes(2, 3)
    elif layout == "strided":
        x = rng.standard_normal(shape[:-1] + (2 * shape[-1],)).astype(dtype)[..., ::2]
    else:
        x = rng.standard_normal(shape).astype(dtype)
    x = x * draw(st.sampled_from([1.0, 3.0])) + draw(st.sampled_from([0.0, 2.0]))
    g = rng.standard_normal(shape).astype(dtype)
    C = G * Cg
    w, b = (1 + 0.3 * rng.standard_normal((2, C))).astype(dtype)
    return x.astype(dtype, copy=False), g, w, b, G


# -- group norm ---------------------------------------------------------------


@given(nchw(), st.booleans())
def test_group_norm_fast_and_xp_match_reference(case, affine):
    x, g, w, b, G = case
    w, b = (w, b) if affine else (None, None)
    ref = K.group_norm_forward_reference(x, G, w, b)
    for impl in (KT.group_norm_forward, K.group_norm_forward_xp):
        for got, want in zip(impl(x, G, w, b), ref):
            assert got.dtype == x.dtype
            close(got, want, x.dtype.type)
    mean, rstd = ref[1], ref[2]
    bref = K.group_norm_backward_reference(g, x, mean, rstd, G, w)
    for impl in (KT.group_norm_backward, K.group_norm_backward_xp):
        for got, want in zip(impl(g, x, mean, rstd, G, w), bref):
            close(got, want, x.dtype.type)


def test_group_norm_constant_and_offset_input_stay_finite_and_accurate():
    c = np.full((2, 4, 3, 3), 7.25, np.float32)
    y, mean, rstd = KT.group_norm_forward(c, 2)
    assert np.all(y == 0) and np.all(np.isfinite(rstd)) and np.allclose(mean, 7.25)
    dx, dw, db = KT.group_norm_backward(np.ones_like(c), c, mean, rstd, 2)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dw))
    # a large common offset must not destroy the variance (two-pass float64 statistics)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 8))
    y_off = KT.group_norm_forward((x + 1e4).astype(np.float32), 2)[0]
    y_ref = K.group_norm_forward_reference(x, 2)[0]
    np.testing.assert_allclose(y_off, y_ref, atol=5e-3)


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_central_differences(affine):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 5, 3)).swapaxes(2, 3)  # non-contiguous
    if affine:
        w, b = 1 + 0.3 * rng.standard_normal((2, 6))
        check_gradients(lambda x, w, b: F.group_norm(x, 3, w, b), [x, w, b])
    else:
        check_gradients(lambda x: F.group_norm(x, 3), [x])


# -- layer norm ---------------------------------------------------------------


@given(nchw(), st.integers(1, 3), st.booleans())
def test_layer_norm_fast_and_xp_match_reference(case, k, affine):
    x, g, _, _, _ = case
    k = min(k, x.ndim)
    ns = x.shape[x.ndim - k:]
    rng = np.random.default_rng(0)
    w, b = ((1 + 0.3 * rng.standard_normal((2,) + ns)).astype(x.dtype)) if affine else (None, None)
    ref = K.layer_norm_forward_reference(x, ns, w, b)
    for impl in (KT.layer_norm_forward, K.layer_norm_forward_xp):
        for got, want in zip(impl(x, ns, w, b), ref):
            close(got, want, x.dtype.type)
    bref = K.layer_norm_backward_reference(g, x, ref[1], ref[2], ns, w)
    for impl in (KT.layer_norm_backward, K.layer_norm_backward_xp):
        for got, want in zip(impl(g, x, ref[1], ref[2], ns, w), bref):
            close(got, want, x.dtype.type)


def test_layer_norm_central_differences():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 5))[:, ::2]
    w, b = 1 + 0.3 * rng.standard_normal((2, 5))
    check_gradients(lambda x, w, b: F.layer_norm(x, 5, w, b), [x, w, b])
    check_gradients(lambda x: F.layer_norm(x, (2, 5)), [x])


# -- batch norm ---------------------------------------------------------------


@given(nchw(), st.booleans(), st.booleans())
def test_batch_norm_fast_and_xp_match_reference(case, training, affine):
    x, g, w, b, _ = case
    w, b = (w, b) if affine else (None, None)
    C = x.shape[1]
    rng = np.random.default_rng(3)
    rm, rv = (None, None) if training else (rng.standard_normal(C).astype(x.dtype), rng.random(C).astype(x.dtype) + 0.5)
    ref = K.batch_norm_forward_reference(x, w, b, rm, rv, training, 1e-5)
    for impl in (KT.batch_norm_forward, K.batch_norm_forward_xp):
        for got, want in zip(impl(x, w, b, rm, rv, training, 1e-5), ref):
            close(got, want, x.dtype.type)
    bref = K.batch_norm_backward_reference(g, x, ref[1], ref[2], w, training)
    for impl in (KT.batch_norm_backward, K.batch_norm_backward_xp):
        for got, want in zip(impl(g, x, ref[1], ref[2], w, training), bref):
            close(got, want, x.dtype.type)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_central_differences(training):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 3, 2))
    w, b = 1 + 0.3 * rng.standard_normal((2, 4))
    rm, rv = rng.standard_normal(4), rng.random(4) + 0.5
    check_gradients(lambda x, w, b: F.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training), [x, w, b])


# -- torch oracle -------------------------------------------------------------


def _torch_grads(torch, f, arrays, g):
    ts = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
    out = f(*ts)
    out.backward(torch.tensor(g))
    return out.detach().numpy(), [None if t is None else t.grad.numpy() for t in ts]


def _ours_grads(f, arrays, g):
    ts = [None if a is None else nd.tensor(a, requires_grad=True) for a in arrays]
    out = f(*ts)
    out.backward(g)
    return out.numpy(), [None if t is None else t.grad.numpy() for t in ts]


def _assert_oracle(ours, theirs):
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(ours[1], theirs[1]):
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_torch_oracle_group_and_layer_norm():
    torch = pytest.importorskip("torch", reason="torch is the oracle for the norm kernels")
    tf = torch.nn.functional
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 12, 5, 7)).astype(np.float32) * 2 + 1
    g = rng.standard_normal(x.shape).astype(np.float32)
    w, b = (1 + 0.3 * rng.standard_normal((2, 12))).astype(np.float32)
    _assert_oracle(_ours_grads(lambda x, w, b: F.group_norm(x, 4, w, b), [x, w, b], g),
                   _torch_grads(torch, lambda x, w, b: tf.group_norm(x, 4, w, b), [x, w, b], g))
    lw, lb = (1 + 0.3 * rng.standard_normal((2, 5, 7))).astype(np.float32)
    _assert_oracle(_ours_grads(lambda x, w, b: F.layer_norm(x, (5, 7), w, b), [x, lw, lb], g),
                   _torch_grads(torch, lambda x, w, b: tf.layer_norm(x, (5, 7), w, b), [x, lw, lb], g))


@pytest.mark.parametrize("training", [True, False])
def test_torch_oracle_batch_norm_and_running_stats(training):
    torch = pytest.importorskip("torch", reason="torch is the oracle for the norm kernels")
    tf = torch.nn.functional
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 6, 5, 3)).astype(np.float32) * 2 + 1
    g = rng.standard_normal(x.shape).astype(np.float32)
    w, b = (1 + 0.3 * rng.standard_normal((2, 6))).astype(np.float32)
    rm0, rv0 = rng.standard_normal(6).astype(np.float32), (rng.random(6) + 0.5).astype(np.float32)
    rm, rv, trm, trv = rm0.copy(), rv0.copy(), torch.tensor(rm0), torch.tensor(rv0)
    ours = _ours_grads(lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training, 0.3), [x, w, b], g)
    theirs = _torch_grads(torch, lambda x, w, b: tf.batch_norm(x, trm, trv, w, b, training, 0.3), [x, w, b], g)
    _assert_oracle(ours, theirs)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_torch_oracle_modules_state_dict_and_outputs(momentum):
    torch = pytest.importorskip("torch", reason="torch is the oracle for the norm modules")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 8, 3, 5)).astype(np.float32)
    pairs = [
        (nn.GroupNorm(4, 8), torch.nn.GroupNorm(4, 8)),
        (nn.GroupNorm(2, 8, affine=False), torch.nn.GroupNorm(2, 8, affine=False)),
        (nn.LayerNorm((3, 5)), torch.nn.LayerNorm((3, 5))),
        (nn.LayerNorm(5, bias=False), torch.nn.LayerNorm(5, bias=False)),
        (nn.BatchNorm2d(8, momentum=momentum), torch.nn.BatchNorm2d(8, momentum=momentum)),
        (nn.BatchNorm2d(8, affine=False, track_running_stats=False),
         torch.nn.BatchNorm2d(8, affine=False, track_running_stats=False)),
    ]
    for ours, theirs in pairs:
        sd = theirs.state_dict()
        assert list(ours.state_dict()) == list(sd)
        for k, v in ours.state_dict().items():
            np.testing.assert_array_equal(v, sd[k].numpy())
        for mode in ("train", "train", "eval"):  # two steps exercise the running averages
            getattr(ours, mode)()
            getattr(theirs, mode)()
            np.testing.assert_allclose(ours(nd.tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(),
                                       rtol=1e-4, atol=1e-5)
        for k, v in ours.state_dict().items():
            np.testing.assert_allclose(v, theirs.state_dict()[k].numpy(), rtol=1e-5, atol=1e-6)


# -- bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: F.group_norm(np.zeros((2, 6, 3)), 4), "(2, 6, 3)"),
        (lambda: F.group_norm(np.zeros(6), 3), "(6,)"),
        (lambda: F.group_norm(np.zeros((2, 6, 3)), 3, np.ones(5)), "(5,)"),
        (lambda: F.layer_norm(np.zeros((2, 6, 3)), (6,)), "(2, 6, 3)"),
        (lambda: F.layer_norm(np.zeros((2, 6, 3)), 3, np.ones(4)), "(4,)"),
        (lambda: F.batch_norm(np.zeros((2, 6, 3)), np.zeros(5), np.ones(5)), "(5,)"),
        (lambda: F.batch_norm(np.zeros((1, 6, 1)), None, None, training=True), "(1, 6, 1)"),
        (lambda: F.batch_norm(np.zeros((2, 6, 3)), None, None), "running_mean"),
        (lambda: nn.GroupNorm(3, 8), "num_channels=8"),
        (lambda: nn.BatchNorm2d(3)(nd.zeros(2, 3, 4)), "(2, 3, 4)"),
    ],
)
def test_bad_input_raises_value_error_naming_the_shapes(call, words):
    with pytest.raises(ValueError, match=__import__("re").escape(words)):
        call()
