"""Dense layer kernel: BLAS path vs the reference loops, central differences, torch."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npdiff as nd
import npdiff.nn.functional as F
from npdiff.kernels import gemm
from tests.gradcheck import check_gradients


@given(st.integers(1, 6), st.integers(1, 7), st.integers(1, 5), st.booleans(), st.integers(0, 2**31))
def test_fast_matches_reference(m, k, n, transposed, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((k, m)).T if transposed else rng.standard_normal((m, k))  # non-contiguous view
    w, b, g = rng.standard_normal((n, k)), rng.standard_normal(n), rng.standard_normal((m, n))
    np.testing.assert_allclose(gemm.linear_forward(x, w, b), gemm.linear_forward_reference(x, w, b), rtol=1e-12)
    for ours, ref in zip(gemm.linear_backward(g, x, w), gemm.linear_backward_reference(g, x, w)):
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)


@given(st.lists(st.integers(1, 3), min_size=0, max_size=2), st.integers(1, 4), st.integers(1, 4),
       st.integers(0, 2**31))
def test_gradients_central_differences(lead, k, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(tuple(lead) + (k,))
    w, b = rng.standard_normal((n, k)), rng.standard_normal(n)
    check_gradients(F.linear, [x, w, b])
    check_gradients(lambda a, c: F.linear(a, c), [x, w])


def test_matches_torch():
    torch = pytest.importorskip("torch", reason="torch.nn.functional.linear is the oracle")
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in [(2, 5, 16), (8, 16), (8,)])
    g = rng.standard_normal((2, 5, 8)).astype(np.float32)
    ts = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    torch.nn.functional.linear(*ts).backward(torch.tensor(g))
    ns = [nd.tensor(a, requires_grad=True) for a in (x, w, b)]
    out = F.linear(*ns)
    out.backward(g)
    np.testing.assert_allclose(out.numpy(), torch.nn.functional.linear(*ts).detach().numpy(), rtol=1e-5, atol=1e-5)
    for n_, t_ in zip(ns, ts):
        np.testing.assert_allclose(n_.grad.numpy(), t_.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\).*in_features=5"):
        F.linear(nd.zeros(3, 4), nd.zeros(2, 5))
    with pytest.raises(ValueError, match=r"bias shape \(3,\)"):
        F.linear(nd.zeros(3, 5), nd.zeros(2, 5), nd.zeros(3))


@pytest.mark.parametrize("m, k, n", [(300, 170, 230), (4096, 256, 64), (7, 4096, 300)])
def test_threaded_matmul_matches_numpy(m, k, n):
    """The row-split path (above PARALLEL_MIN_MACS): C-, F- and non-contiguous operands."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k)).astype(np.float32)
    assert m * k * n >= gemm.PARALLEL_MIN_MACS
    np.testing.assert_allclose(gemm.matmul(a, b.T), a @ b.T, rtol=1e-4, atol=1e-3)        # F-ordered right
    np.testing.assert_allclose(gemm.matmul(b, a.T), b @ a.T, rtol=1e-4, atol=1e-3)        # F-ordered right
    wide = rng.standard_normal((m, 2 * k)).astype(np.float32)[:, ::2]                   # strided left
    np.testing.assert_allclose(gemm.matmul(wide, b.T), wide @ b.T, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("m, n, k", [(4096, 1024, 256), (333, 300, 129), (2, 4096, 2048)])
def test_threaded_transposed_matmul_matches_numpy(m, n, k):
    """gᵀx with the M-axis reduction split over threads (per-thread partial sums)."""
    rng = np.random.default_rng(2)
    g = rng.standard_normal((m, n)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    assert m * n * k >= gemm.PARALLEL_MIN_MACS
    np.testing.assert_allclose(gemm.matmul_tn(g, x), g.T @ x, rtol=1e-4, atol=1e-3)
