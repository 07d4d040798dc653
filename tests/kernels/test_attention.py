"""Attention family, what the table harness does not cover: several ragged (shrunk) tiles,
the default tiles over long keys, huge logits."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npdiff import kernels as KT
from npdiff.kernels import attention as K
from tests.kernels.harness import close, run
from tests.kernels.test_table import ATTENTION, _attention_case

TERMS = 1024  # sums over ≤ 19 keys or 11 queries of ≤ 20-wide products; ×8 for exp and 1/l


@given(_attention_case(max_lq=11, max_lk=19))
def test_small_tiles_match_reference(case):
    """The table's attention cases with longer rows, on tiles shrunk to 4 queries × 8 keys:
    several ragged query and key tiles, online rescaling across key tiles."""
    y_ref, g_ref = run(ATTENTION, case, "reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(K, "TILE_Q", 4)
        mp.setattr(K, "TILE_K", 8)
        mp.setattr(K, "BLAS_TILE_SCALE", 1)
        y, grads = run(ATTENTION, case, "numba")
    close(y, y_ref, case.dtype, TERMS, "forward")
    for name, want in g_ref.items():
        close(grads[name], want, case.dtype, TERMS, f"d/d{name}")


@pytest.mark.parametrize("d", [8, 64])
def test_default_tiles_long_keys_match_xp(d):
    """Lk = 1100 spans several key tiles of the real sizes (3 of the BLAS path's 512, 9 of the small
    head's 128), Lq = 300 two query tiles of 256 (the second ragged); both tile-product paths."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 300, d)).astype(np.float32)
    k = rng.standard_normal((2, 1100, d)).astype(np.float32)
    v = rng.standard_normal((2, 1100, 5)).astype(np.float32)
    g = rng.standard_normal((2, 300, 5)).astype(np.float32)
    o, l = KT.attention_forward(q, k, v)
    o64, l64 = K.attention_forward_xp(*(a.astype(np.float64) for a in (q, k, v)))
    np.testing.assert_allclose(o, o64, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(l, l64, rtol=1e-5)
    got = KT.attention_backward(g, q, k, v, o, l)
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
        o, lse = KT.attention_forward(q, k, v, scale=1.0)
        assert np.isfinite(o).all() and np.isfinite(lse).all()
        S = np.einsum("nid,njd->nij", q.astype(np.float64), k.astype(np.float64))
        winner = S.argmax(-1)
        np.testing.assert_allclose(o, np.take_along_axis(v, winner[..., None], 1), rtol=1e-6)
        g = np.ones_like(o)
        assert all(np.isfinite(x).all() for x in KT.attention_backward(g, q, k, v, o, lse, scale=1.0))


@settings(deadline=None, max_examples=60)
@given(lq=st.integers(1, 13), lk=st.integers(1, 40), d=st.sampled_from([17, 32]), dtype=st.sampled_from([np.float32, np.float64]),
       spread=st.sampled_from([1.0, 30.0, 1e3]), ramp=st.sampled_from([0.0, 1.0, -1.0, 50.0]),
       mask=st.sampled_from(["none", "first_key", "leading_keys", "row", "random"]), seed=st.integers(0, 2**16))
def test_lazy_shift_matches_float64(lq, lk, d, dtype, spread, ramp, mask, seed):
    """The BLAS forward's lazy shift (``attention_forward_tiled``): a row's tile is kept with a stale
    shift m_i while Σ_j exp(min(S_ij − m_i, 87)) ≤ T = 2¹⁶, else rescaled to its max. On tiles shrunk to
    4 queries × 8 keys (up to 5 key tiles), against float64 whole-matrix attention: score spreads up
    to 1e3·|q|·|k| (every tile after the first rejects), key ramps (a larger max in every later tile:
    rejections; or the first key the max), a masked first key (no S_i0 guess), rows whose leading
    tiles are all masked (no shift for several tiles), fully masked rows (O = 0, lse = −∞ exactly).
    Tolerance from the arithmetic: each float32 score carries an error Δ ≤ 16·(d + 1)·ε·max(1, max|S|)
    (a d-term product, the bias add); a softmax of scores each off by ≤ Δ moves lse by ≤ Δ and O_i
    (a convex combination of v rows) by ≤ (e^{2Δ} − 1)·max|v|; the sums over ≤ lk keys add lk·ε."""
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((2, lq, d)) * spread).astype(dtype)
    k = rng.standard_normal((2, lk, d)).astype(dtype)
    v = rng.standard_normal((2, lk, 3)).astype(dtype)
    bias = np.broadcast_to(ramp * np.arange(lk, dtype=np.float64), (1, lq, lk)).copy()
    if mask == "first_key":
        bias[:, :, 0] = -np.inf
    elif mask == "leading_keys":
        bias[:, :, : min(lk - 1, 17)] = -np.inf  # up to two whole key tiles of 8 masked, then keys
    elif mask == "row":
        bias[:, lq // 2, :] = -np.inf
    elif mask == "random":
        bias[rng.random(bias.shape) < 0.5] = -np.inf
    bias = bias.astype(dtype)
    index = np.zeros(2, np.int64)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(K, "TILE_Q", 4)
        mp.setattr(K, "TILE_K", 8)
        mp.setattr(K, "BLAS_TILE_SCALE", 1)
        o, lse = KT.attention_forward(q, k, v, bias=bias, bias_index=index, scale=1.0)
    o64, lse64 = K.attention_forward_xp(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                                        bias=bias.astype(np.float64), bias_index=index, scale=1.0)
    masked = np.isneginf(lse64)
    np.testing.assert_array_equal(np.isneginf(lse), masked)  # fully masked rows: lse = −∞ ...
    assert (o[masked] == 0).all()  # ... and O = 0 exactly
    assert np.isfinite(o).all() and np.isfinite(lse[~masked]).all()
    eps = np.finfo(dtype).eps
    S = np.einsum("nid,njd->nij", q.astype(np.float64), k.astype(np.float64)) + bias.astype(np.float64)
    delta = 16 * (d + 1) * eps * max(1.0, float(np.abs(S[np.isfinite(S)]).max(initial=0)))
    tol_lse = delta + 16 * lk * eps * max(1.0, float(np.abs(lse64[~masked]).max(initial=0)))
    np.testing.assert_allclose(lse[~masked], lse64[~masked], rtol=0, atol=tol_lse)
    tol_o = (np.expm1(2 * delta) + 16 * lk * eps) * max(1.0, float(np.abs(v).max()))
    np.testing.assert_allclose(o, o64, rtol=0, atol=tol_o)
