"""Norm family, what the table harness (test_table.py) does not cover: constant and offset input."""

import numpy as np

from npdiff import kernels as KT
from npdiff.kernels import norm as K


# -- group norm ---------------------------------------------------------------


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
