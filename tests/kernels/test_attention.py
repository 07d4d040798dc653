"""Attention family, what the table harness does not cover: several ragged (shrunk) tiles,
the default tiles over long keys, huge logits."""

import numpy as np
import pytest
from hypothesis import given

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
