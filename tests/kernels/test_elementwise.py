"""Elementwise family, what the table harness (test_table.py) does not cover: extreme logits, chunking."""

import numpy as np

import npdiff.kernels as KT
import npdiff.nn.functional as F
from npdiff.kernels import elementwise as K
from tests.kernels.harness import close


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
    for column in ("numba", "xp"):
        with KT.use(column):
            close(KT.gelu_forward(x), K.unary_forward_reference("gelu", x.astype(np.float64)), np.float32, 8)
            close(KT.silu_backward(x, x), K.unary_backward_reference("silu", x, x.astype(np.float64)), np.float32, 8)
            close(KT.mse_loss_forward(x, x * 0.5, "sum"), np.sum((x * 0.5) ** 2, dtype=np.float64), np.float32,
                  x.size)
