"""Norm family, what the table harness (test_table.py) does not cover: constant and offset input."""

import numpy as np
import pytest

from npdiff import kernels as KT
from npdiff.kernels import norm as K
from tests.kernels.harness import Case, check_agreement, check_central_differences
from tests.kernels.test_table import NORMS


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


def _two_pass_stats(x, G):
    """μ and ρ = 1/√(σ² + ε) of each (n, group) in float64, the textbook two passes."""
    xg = x.astype(np.float64).reshape(x.shape[0], G, -1)
    mu = xg.mean(-1)
    return mu, 1 / np.sqrt(((xg - mu[..., None]) ** 2).mean(-1) + 1e-5)


def test_group_norm_one_pass_statistics_are_as_accurate_as_two_passes():
    """The numba column's σ² = Σd²/M − m² (d = x − x₀) is within 2⁻²⁷ relative of the two-pass value
    (norm.py, docs/kernels.md), so μ and ρ, returned in float32, are the float64 values rounded once:
    within float32's unit roundoff 2⁻²⁴ plus 2⁻²⁸, and 2⁻²³ leaves room for nothing else. Cases: a
    common offset 10⁴σ (the unshifted Σx², Σx would lose it all), and an outlier at x₀ on a 2¹⁶-element
    group, for which the kernel must take its second pass (m²/σ² ≈ 6·10⁴ > 2²⁶/(3M) − 1 = 340)."""
    rng = np.random.default_rng(0)
    offset = (rng.standard_normal((3, 8, 16, 16)) + 1e4).astype(np.float32)
    outlier = rng.standard_normal((2, 2, 256, 256)).astype(np.float32)
    outlier[:, 0, 0, 0] = 1e3  # x₀ of each (n, group = all channels) set
    for x, G in ((offset, 4), (outlier, 1)):
        _, mean, rstd = K.group_norm_forward_numba(x, G)
        mu, rho = _two_pass_stats(x, G)
        np.testing.assert_allclose(mean, mu, rtol=2**-23)
        np.testing.assert_allclose(rstd, rho, rtol=2**-23)


@pytest.mark.parametrize("hw", [(2, 2), (4, 4), (8, 8)], ids=lambda hw: f"S={hw[0] * hw[1]}")
def test_group_norm_row_and_slab_passes_agree_with_the_reference(hw):
    """The numba column runs its elementwise passes per channel row when S = H·W ≥ SHORT_ROW and over
    whole slabs with the factors spread (``_spread_over_slabs``) below it; the table harness draws
    S ≤ 25, so the row form is checked here: against the reference (plain and with SiLU fused, float32
    and float64, affine and not) and by float64 central differences."""
    assert (hw[0] * hw[1] >= K.SHORT_ROW) == (hw == (8, 8)), "(8, 8) is the row-form case, the others the slab form"
    rng = np.random.default_rng(hw[0])
    specs = [s for s in NORMS if s.name in ("group_norm", "group_norm_silu")]
    for dtype in (np.float32, np.float64):
        for affine in (True, False):
            x = (3 * rng.standard_normal((2, 6) + hw) + 1).astype(dtype)
            wb = [rng.standard_normal(6).astype(dtype) if affine else None for _ in range(2)]
            case = Case(dict(x=x, weight=wb[0], bias=wb[1]), dict(num_groups=3, eps=1e-5))
            for spec in specs:
                check_agreement(spec, case, "numba")
    for spec in specs:
        with KT.use("numba"):
            check_central_differences(spec, Case(dict(x=rng.standard_normal((2, 6) + hw), weight=rng.standard_normal(6),
                                                      bias=rng.standard_normal(6)), dict(num_groups=3, eps=1e-5)))
