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


def _gelu_exact(x, approximate):
    """GELU and its derivative in float64, from forms that do not cancel in the negative tail."""
    from scipy.special import erfc

    x = x.astype(np.float64)
    if approximate == "none":
        cdf = 0.5 * erfc(-x / np.sqrt(2.0))
        return x * cdf, cdf + x * np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)
    u = np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)
    s, s_neg = 1.0 / (1.0 + np.exp(-2.0 * u)), 1.0 / (1.0 + np.exp(2.0 * u))  # ½(1 ± tanh u)
    return x * s, s + 2.0 * x * s * s_neg * np.sqrt(2.0 / np.pi) * (1.0 + 3 * 0.044715 * x * x)


def test_gelu_tails_are_accurate_to_a_few_ulps():
    """Relative accuracy where GELU is tiny (x ≪ 0): ½(1 + erf) and ½(1 + tanh) written as sums
    cancel there (float32: 0.1 % error at x = −4 for erf, 30 % at x = −5 for tanh), so the
    columns use ½ erfc(−x/√2) and σ(2u). Bound: 32 float32 ulps of the exact value (erfc's
    own error is a few ulps; the float32 input is exact)."""
    x = np.concatenate([-np.geomspace(0.01, 9.0, 200), np.geomspace(0.01, 9.0, 50)]).astype(np.float32)
    rtol = 32 * np.finfo(np.float32).eps
    for approximate, name in (("none", "gelu"), ("tanh", "gelu_tanh")):
        y, dy = _gelu_exact(x, approximate)
        keep = np.abs(y) > np.finfo(np.float32).tiny * 1e3  # away from float32 underflow
        for column in ("numba", "xp"):
            with KT.use(column):
                got = getattr(KT, f"{name}_forward")(x)
                grad = getattr(KT, f"{name}_backward")(np.ones_like(x), x)
            np.testing.assert_allclose(got[keep], y[keep], rtol=rtol, atol=0, err_msg=f"{name} {column}")
            np.testing.assert_allclose(grad, dy, rtol=rtol, atol=rtol, err_msg=f"{name}' {column}")


def test_erfc_polynomial_is_the_fit_and_meets_its_bound():
    """The exact GELU's float32 erfc is erfc(z) = t·Q(t)·e^{−z²}, t = 1/(1 + z/2), Q the degree-10
    polynomial ``ERFC_Q``. The stored coefficients are what benchmarks/erfc_fit.py computes (Q's values
    equal to 1e-9), and t·Q(t) approximates erfcx(z) = e^{z²} erfc(z) to 1.1e-8 relative for every
    z ≥ 0 in exact arithmetic (2e-8 allowed) and to 2.75 ε with Horner's rule in float32 (3 ε allowed):
    erfc keeps its relative accuracy in the whole tail."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "erfc_fit.py")
    spec = importlib.util.spec_from_file_location("erfc_fit", path)
    fit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit)
    t = np.linspace(0, 1, 10_001)
    refit = np.polynomial.polynomial.polyval(t, fit.fit())
    np.testing.assert_allclose(np.polynomial.polynomial.polyval(t, K.ERFC_Q), refit, rtol=1e-9, atol=0)
    exact, horner32 = fit.errors(np.asarray(K.ERFC_Q))
    assert exact < 2e-8 and horner32 < 3 * np.finfo(np.float32).eps


def test_exact_gelu_float32_error_bound():
    """The float32 exact GELU (numba column) against float64 libm on a dense grid of float32 inputs.
    Error budget of Φ(−|x|) = ½·t·Q(t)·e^{−x²/2}: t·Q(t) in float32 ≤ 2.75 ε (fit + Horner's rule,
    benchmarks/erfc_fit.py), the vector exp < 1e-7 ≈ 0.9 ε with an exact argument (Dekker's
    correction of fl(x²)), the correction factor and three products ≤ 2 ε, x·Φ ½ ε: about 6 ε, so
    8 ε relative for the value (where it is a normal float32) and 8 ε·(|Φ| + |xφ|) for the
    derivative Φ + xφ, whose two terms cancel near its zero at x ≈ −0.75. ±1e30 give x and −0."""
    from scipy.special import erfc

    eps = np.finfo(np.float32).eps
    x = np.concatenate([np.linspace(-14, 14, 400_001), -np.geomspace(1e-6, 14, 20_000),
                        np.geomspace(1e-6, 14, 20_000)]).astype(np.float32)
    x64 = x.astype(np.float64)
    cdf, pdf = 0.5 * erfc(-x64 / np.sqrt(2)), np.exp(-0.5 * x64 * x64) / np.sqrt(2 * np.pi)
    y, dy = x64 * cdf, cdf + x64 * pdf
    with KT.use("numba"):
        got = KT.gelu_forward(x).astype(np.float64)
        grad = KT.gelu_backward(np.ones_like(x), x).astype(np.float64)
        big = KT.gelu_forward(np.array([1e30, -1e30, 0.0], np.float32))
    normal = np.abs(y) > np.finfo(np.float32).tiny * 1e3  # away from subnormal results
    assert np.all(np.abs(got - y)[normal] <= 8 * eps * np.abs(y)[normal])
    scale = np.abs(cdf) + np.abs(x64 * pdf)
    normal = scale > np.finfo(np.float32).tiny * 1e3
    assert np.all(np.abs(grad - dy)[normal] <= 8 * eps * scale[normal])
    np.testing.assert_array_equal(big, np.array([1e30, 0.0, 0.0], np.float32))
