"""Attention family: reference vs tiled Numba vs xp, central differences, torch oracle, bad input."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npdiff as nd
import npdiff.nn.functional as F
from npdiff.kernels import attention as K
from tests.gradcheck import check_gradients

TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}


def close(a, b, dtype):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), **TOL[dtype])


def _array(rng, shape, dtype, layout):
    """A random array of ``shape``; "transposed"/"strided" give non-contiguous views."""
    if layout == "transposed":
        return rng.standard_normal(shape[:-2] + shape[:-3:-1]).astype(dtype).swapaxes(-1, -2)
    if layout == "strided":
        return rng.standard_normal(shape[:-1] + (2 * shape[-1],)).astype(dtype)[..., ::2]
    return rng.standard_normal(shape).astype(dtype)


@st.composite
def attention_case(draw):
    """q, k, v, g, bias (M, Lq, Lk) or None, bias_index: batch 1-3, ragged lengths that span
    several of the (shrunk) tiles, head dims on both sides of SMALL_HEAD_DIM, dv != d."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    N, Lq, Lk = draw(st.integers(1, 3)), draw(st.integers(1, 11)), draw(st.integers(1, 19))
    d = draw(st.sampled_from([1, 3, 8, 17, 20]))
    dv = draw(st.sampled_from([d, 2, 5]))
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    q, k, v = (_array(rng, s, dtype, layout) for s in ((N, Lq, d), (N, Lk, d), (N, Lk, dv)))
    q = q * draw(st.sampled_from([1.0, 4.0]))
    g = rng.standard_normal((N, Lq, dv)).astype(dtype)
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
    return q, k, v, g, bias, index


@given(attention_case(), st.sampled_from([None, 0.3]))
def test_fast_and_xp_match_reference(case, scale):
    with pytest.MonkeyPatch.context() as mp:  # small tiles: several ragged query and key tiles
        mp.setattr(K, "TILE_Q", 4)
        mp.setattr(K, "TILE_K", 8)
        _compare_with_reference(*case, scale)


def _compare_with_reference(q, k, v, g, bias, index, scale):
    full = None if bias is None else bias[index]
    out, lse = K.attention_forward_reference(q, k, v, full, scale)
    dref = K.attention_backward_reference(g, q, k, v, out, lse, full, scale)
    dt = q.dtype.type
    for fwd, bwd in ((K.attention_forward, K.attention_backward), (K.attention_forward_xp, K.attention_backward_xp)):
        o, l = fwd(q, k, v, bias, index, scale)
        assert o.dtype == q.dtype and o.shape == out.shape
        close(o, out, dt)
        np.testing.assert_array_equal(np.isinf(l), np.isinf(lse))
        close(np.where(np.isinf(l), 0, l), np.where(np.isinf(lse), 0, lse), dt)
        for got, want in zip(bwd(g, q, k, v, o, l, bias, index, scale), dref):
            close(got, want, dt)


@pytest.mark.parametrize("d", [8, 64])
def test_default_tiles_long_keys_match_xp(d):
    """Lk = 300 spans three key tiles of the real sizes; both tile-product paths."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 70, d)).astype(np.float32)
    k = rng.standard_normal((2, 300, d)).astype(np.float32)
    v = rng.standard_normal((2, 300, 5)).astype(np.float32)
    g = rng.standard_normal((2, 70, 5)).astype(np.float32)
    o, l = K.attention_forward(q, k, v)
    o64, l64 = K.attention_forward_xp(*(a.astype(np.float64) for a in (q, k, v)))
    np.testing.assert_allclose(o, o64, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(l, l64, rtol=1e-5)
    got = K.attention_backward(g, q, k, v, o, l)
    want = K.attention_backward_xp(*(a.astype(np.float64) for a in (g, q, k, v, o64, l64)))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)


def test_exact_on_huge_logits():
    """Logits of ~1e6 (exp would overflow without the max shift): one key wins outright."""
    rng = np.random.default_rng(2)
    for dtype, d in ((np.float32, 8), (np.float32, 32), (np.float64, 8)):
        q = (rng.standard_normal((2, 6, d)) * 1e3).astype(dtype)
        k = (rng.standard_normal((2, 9, d)) * 1e3).astype(dtype)
        v = rng.standard_normal((2, 9, 4)).astype(dtype)
        o, lse = K.attention_forward(q, k, v, scale=1.0)
        assert np.isfinite(o).all() and np.isfinite(lse).all()
        S = np.einsum("nid,njd->nij", q.astype(np.float64), k.astype(np.float64))
        winner = S.argmax(-1)
        np.testing.assert_allclose(o, np.take_along_axis(v, winner[..., None], 1), rtol=1e-6)
        g = np.ones_like(o)
        assert all(np.isfinite(x).all() for x in K.attention_backward(g, q, k, v, o, lse, scale=1.0))


def test_gradients_central_differences():
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((2, 2, 3, 4)), rng.standard_normal((2, 2, 5, 4))
    v = rng.standard_normal((2, 2, 5, 3))
    mask = rng.random((2, 1, 3, 5)) < 0.8
    mask[..., 0] = True
    check_gradients(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=mask), [q, k, v])
    fmask = rng.standard_normal((3, 5))
    check_gradients(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=fmask, scale=0.7), [q, k, v])
    q20, k20 = rng.standard_normal((1, 3, 20)), rng.standard_normal((1, 4, 20))  # BLAS tile path
    check_gradients(lambda a, b, c: F.scaled_dot_product_attention(a, b, c), [q20, k20, rng.standard_normal((1, 4, 2))])


@pytest.mark.parametrize(
    "shape_q, shape_k, dv, mask_shape, mask_kind",
    [
        ((2, 3, 17, 8), (2, 3, 33, 8), 8, None, None),
        ((2, 4, 70, 32), (2, 4, 150, 32), 24, (2, 1, 70, 150), "bool"),
        ((1, 2, 9, 64), (1, 2, 200, 64), 64, (9, 200), "float"),
        ((3, 40, 8), (3, 300, 8), 5, (3, 40, 300), "bool"),
    ],
)
def test_matches_torch(shape_q, shape_k, dv, mask_shape, mask_kind):
    torch = pytest.importorskip("torch", reason="torch is the oracle for attention")
    rng = np.random.default_rng(4)
    q = rng.standard_normal(shape_q).astype(np.float32)
    k = rng.standard_normal(shape_k).astype(np.float32)
    v = rng.standard_normal(shape_k[:-1] + (dv,)).astype(np.float32)
    g = rng.standard_normal(shape_q[:-1] + (dv,)).astype(np.float32)
    mask = None
    if mask_kind == "bool":
        mask = rng.random(mask_shape) < 0.6
        mask.reshape(-1, mask_shape[-1])[::4] = False  # some fully masked rows
    elif mask_kind == "float":
        mask = rng.standard_normal(mask_shape).astype(np.float32)
    ours = [nd.tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ours, attn_mask=mask)
    out.backward(g)
    theirs = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    tmask = None if mask is None else torch.tensor(mask)
    tout = torch.nn.functional.scaled_dot_product_attention(*theirs, attn_mask=tmask)
    tout.backward(torch.tensor(g))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-4, atol=1e-5)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_fully_masked_row_is_zero_with_zero_gradient():
    q = nd.tensor(np.ones((1, 2, 4)), requires_grad=True)
    kv = nd.tensor(np.ones((1, 3, 4)), requires_grad=True)
    mask = np.array([[True, False, True], [False, False, False]])
    out = F.scaled_dot_product_attention(q, kv, kv, attn_mask=mask)
    np.testing.assert_array_equal(out.numpy()[0, 1], 0)
    out.sum().backward()
    np.testing.assert_array_equal(q.grad.numpy()[0, 1], 0)


def test_bad_inputs_name_the_shapes():
    q, k, v = np.zeros((2, 3, 4)), np.zeros((2, 5, 4)), np.zeros((2, 5, 6))
    with pytest.raises(ValueError, match=r"\(2, 5, 3\)"):
        F.scaled_dot_product_attention(q, np.zeros((2, 5, 3)), v)
    with pytest.raises(ValueError, match=r"\(2, 4, 6\)"):
        F.scaled_dot_product_attention(q, k, np.zeros((2, 4, 6)))
    with pytest.raises(ValueError, match="batch dims"):
        F.scaled_dot_product_attention(q, np.zeros((3, 5, 4)), np.zeros((3, 5, 6)))
    with pytest.raises(ValueError, match="rank"):
        F.scaled_dot_product_attention(np.zeros(4), np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="empty"):
        F.scaled_dot_product_attention(np.zeros((2, 0, 4)), k, v)
    with pytest.raises(ValueError, match="attention shapes"):
        K.attention_forward(q, np.zeros((2, 5, 3)), v)
