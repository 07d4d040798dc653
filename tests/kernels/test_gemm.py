"""Dense layer kernel, what the table harness does not cover: the threaded GEMM splits."""

import numpy as np
import pytest

from npdiff.kernels import gemm


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
