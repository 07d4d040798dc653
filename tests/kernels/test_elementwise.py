"""Elementwise family: reference vs Numba vs xp, central differences, torch oracle, dropout, bad input."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npdiff as nd
import npdiff.nn as nn
import npdiff.nn.functional as F
from npdiff.kernels import elementwise as K
from tests.gradcheck import check_gradients

TOL = {np.float32: dict(rtol=2e-6, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}
OPS = ["relu", "sigmoid", "silu", "gelu", "gelu_tanh"]


def close(a, b, dtype):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), **TOL[dtype])


@st.composite
def arrays(draw, min_dims=1):
    """float32/float64 arrays of 1-3 dims (sizes 1-7), values spread over ±20, sometimes a
    transposed or strided (non-contiguous) view."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=min_dims, max_size=3)))
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    if layout == "transposed":
        x = rng.standard_normal(shape[::-1]).T
    elif layout == "strided":
        x = rng.standard_normal(shape[:-1] + (2 * shape[-1],))[..., ::2]
    else:
        x = rng.standard_normal(shape)
    x = (x * draw(st.sampled_from([1.0, 5.0, 20.0]))).astype(dtype)
    return x, rng.standard_normal(shape).astype(dtype)


@given(arrays(), st.sampled_from(OPS))
def test_unary_fast_and_xp_match_reference(case, op):
    x, g = case
    ref, gref = K.unary_forward_reference(op, x), K.unary_backward_reference(op, g, x)
    for fwd, bwd in ((K.unary_forward, K.unary_backward), (K.unary_forward_xp, K.unary_backward_xp)):
        y = fwd(op, x)
        assert y.dtype == x.dtype and y.shape == x.shape
        close(y, ref, x.dtype.type)
        close(bwd(op, g, x), gref, x.dtype.type)


@given(arrays(), st.booleans(), st.data())
def test_softmax_fast_and_xp_match_reference(case, log, data):
    x, g = case
    dim = data.draw(st.integers(-x.ndim, x.ndim - 1))
    ref = K.softmax_forward_reference(x, dim, log)
    gref = K.softmax_backward_reference(g, ref, dim, log)
    for fwd, bwd in ((K.softmax_forward, K.softmax_backward), (K.softmax_forward_xp, K.softmax_backward_xp)):
        y = fwd(x, dim, log)
        close(y, ref, x.dtype.type)
        close(bwd(g, y, dim, log), gref, x.dtype.type)


@given(arrays(), st.sampled_from(["mean", "sum", "none"]))
def test_mse_fast_and_xp_match_reference(case, reduction):
    x, t = case
    ref = K.mse_loss_forward_reference(x, t, reduction)
    g = t * 0.5 if reduction == "none" else np.asarray(1.7, x.dtype)
    gref = K.mse_loss_backward_reference(g, x, t, reduction)
    for fwd, bwd in ((K.mse_loss_forward, K.mse_loss_backward), (K.mse_loss_forward_xp, K.mse_loss_backward_xp)):
        close(fwd(x, t, reduction), ref, x.dtype.type)
        for got, want in zip(bwd(g, x, t, reduction), gref):
            close(got, want, x.dtype.type)


def test_softmax_exact_on_huge_logits():
    x = np.array([[1e30, 1e30 - 1e24, 0.0], [-1e30, 5.0, 5.0]], np.float32)
    for f in (F.softmax, F.log_softmax):
        y = f(x, -1).numpy()
        assert np.isfinite(y).all()
    np.testing.assert_allclose(F.softmax(x, 1).numpy(), [[1, 0, 0], [0, 0.5, 0.5]])
    np.testing.assert_allclose(F.log_softmax(x, 1).numpy()[1, 1:], np.log(0.5))
    y = F.sigmoid(np.array([-1e4, 1e4], np.float32)).numpy()
    np.testing.assert_array_equal(y, [0, 1])


def test_large_arrays_use_several_chunks():
    x = np.random.default_rng(0).standard_normal(3 * K.CHUNK + 5).astype(np.float32)
    close(K.unary_forward("gelu", x), K.unary_forward_xp("gelu", x), np.float32)
    close(K.mse_loss_forward(x, x * 0.5, "sum"), np.sum((x * 0.5) ** 2, dtype=np.float64), np.float32)


@pytest.mark.parametrize(
    "fn",
    [F.relu, F.sigmoid, F.silu, F.gelu, lambda a: F.gelu(a, approximate="tanh"),
     lambda a: F.softmax(a, 1), lambda a: F.log_softmax(a, 0)],
)
def test_gradients_central_differences(fn):
    x = np.random.default_rng(5).standard_normal((3, 4)) * 2
    x[np.abs(x) < 1e-3] = 0.5  # keep relu away from its kink
    check_gradients(fn, [x])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_gradients_central_differences(reduction):
    rng = np.random.default_rng(6)
    check_gradients(lambda a, b: F.mse_loss(a, b, reduction=reduction), [rng.standard_normal((2, 3)),
                                                                         rng.standard_normal((2, 3))])


def test_matches_torch():
    torch = pytest.importorskip("torch", reason="torch is the oracle for the activations")
    tf = torch.nn.functional
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((4, 5, 6)) * 4).astype(np.float32)
    t = rng.standard_normal((4, 5, 6)).astype(np.float32)
    cases = [
        (F.relu, tf.relu), (F.sigmoid, torch.sigmoid), (F.silu, tf.silu), (F.gelu, tf.gelu),
        (lambda a: F.gelu(a, approximate="tanh"), lambda a: tf.gelu(a, approximate="tanh")),
        (lambda a: F.softmax(a, 1), lambda a: tf.softmax(a, 1)),
        (lambda a: F.log_softmax(a, -1), lambda a: tf.log_softmax(a, -1)),
        (lambda a: F.mse_loss(a, t), lambda a: tf.mse_loss(a, torch.tensor(t))),
        (lambda a: F.mse_loss(a, t, reduction="sum"), lambda a: tf.mse_loss(a, torch.tensor(t), reduction="sum")),
        (lambda a: F.mse_loss(a, t, reduction="none"), lambda a: tf.mse_loss(a, torch.tensor(t), reduction="none")),
    ]
    for ours, theirs in cases:
        a = nd.tensor(x, requires_grad=True)
        y = ours(a)
        g = rng.standard_normal(y.shape).astype(np.float32)
        y.backward(g)
        ta = torch.tensor(x, requires_grad=True)
        ty = theirs(ta)
        ty.backward(torch.tensor(g))
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_mse_target_gradient():
    x, t = nd.tensor(np.ones((2, 2)), requires_grad=True), nd.tensor(np.zeros((2, 2)), requires_grad=True)
    F.mse_loss(x, t).backward()
    np.testing.assert_allclose(x.grad.numpy(), 0.5)
    np.testing.assert_allclose(t.grad.numpy(), -0.5)


def test_dropout_statistics_and_gradient():
    x = nd.tensor(np.ones((200, 500), np.float32), requires_grad=True)
    y = F.dropout(x, p=0.3, generator=np.random.default_rng(0))
    kept = y.numpy() != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(y.numpy()[kept], 1 / 0.7, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), y.numpy())  # same mask, same scale
    again = F.dropout(x, p=0.3, generator=np.random.default_rng(0)).numpy()
    np.testing.assert_array_equal(again, y.numpy())


def test_dropout_default_generator_and_edge_probabilities():
    x = np.ones((50, 50), np.float32)
    nd.manual_seed(3)
    a = F.dropout(x).numpy()
    nd.manual_seed(3)
    np.testing.assert_array_equal(F.dropout(x).numpy(), a)
    np.testing.assert_array_equal(F.dropout(x, p=1.0).numpy(), 0)
    np.testing.assert_array_equal(F.dropout(x, p=0.0).numpy(), x)
    np.testing.assert_array_equal(F.dropout(x, p=0.9, training=False).numpy(), x)


def test_modules():
    x = np.random.default_rng(8).standard_normal((3, 4)).astype(np.float32)
    for mod, fn in [(nn.ReLU(), F.relu), (nn.Sigmoid(), F.sigmoid), (nn.SiLU(), F.silu), (nn.GELU(), F.gelu),
                    (nn.GELU("tanh"), lambda a: F.gelu(a, approximate="tanh")), (nn.Softmax(dim=1), lambda a: F.softmax(a, 1))]:
        np.testing.assert_array_equal(mod(x).numpy(), fn(x).numpy())
        assert list(mod.parameters()) == []
    drop = nn.Dropout(p=0.5)
    assert (drop(np.ones((20, 20), np.float32)).numpy() == 0).any()
    drop.eval()
    np.testing.assert_array_equal(drop(x).numpy(), x)


def test_bad_inputs():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        F.mse_loss(x, np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="reduction"):
        F.mse_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(x, approximate="fast")
    with pytest.raises(ValueError, match=r"dim 2 .*\(2, 3\)"):
        F.softmax(x, 2)
    with pytest.raises(ValueError, match="dim must be given"):
        F.log_softmax(x)
    with pytest.raises(ValueError, match="probability"):
        F.dropout(x, p=1.5)
    with pytest.raises(ValueError, match="probability"):
        nn.Dropout(p=-0.1)
    with pytest.raises(ValueError, match="unknown activation"):
        K.unary_forward("tanhh", x)
