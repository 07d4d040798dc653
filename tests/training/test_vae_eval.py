"""The VAE's evaluation metrics: PSNR, SSIM and the reconstruction report (closed forms)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npdiff.metrics import psnr, reconstruction_report, ssim


@settings(max_examples=10)
@given(seed=st.integers(0, 2**31 - 1), sigma=st.floats(0.01, 0.5))
def test_psnr_is_ten_log_range_squared_over_mse(seed, sigma):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (3, 2, 5, 4))
    y = x + sigma * rng.standard_normal(x.shape)
    mse = np.mean((x - y) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(psnr(x, y), 10 * np.log10(4.0 / mse), rtol=1e-12)
    np.testing.assert_allclose(psnr(x, y, data_range=1.0), 10 * np.log10(1.0 / mse), rtol=1e-12)
    assert np.all(np.isinf(psnr(x, x)))


def test_ssim_of_constant_images_is_the_luminance_term():
    """Constant images have zero local variance, so SSIM = (2ab + C₁)/(a² + b² + C₁) exactly."""
    c1 = (0.01 * 2.0) ** 2
    for a, b in [(0.3, 0.3), (0.5, -0.2), (-1.0, 1.0)]:
        x, y = np.full((1, 1, 9, 9), a), np.full((1, 1, 9, 9), b)
        np.testing.assert_allclose(ssim(x, y), (2 * a * b + c1) / (a * a + b * b + c1), rtol=1e-10)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**31 - 1))
def test_ssim_is_one_for_identical_symmetric_and_falls_with_noise(seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (2, 1, 12, 12))
    noisy = [x + s * rng.standard_normal(x.shape) for s in (0.05, 0.3, 1.0)]
    np.testing.assert_allclose(ssim(x, x), 1.0, rtol=1e-12)
    np.testing.assert_allclose(ssim(x, noisy[0]), ssim(noisy[0], x), rtol=1e-12)
    values = [ssim(x, n).mean() for n in noisy]
    assert 1.0 > values[0] > values[1] > values[2]
    assert np.all(np.abs(ssim(x, -x)) <= 1.0)


def test_ssim_window_and_shape_errors():
    with pytest.raises(ValueError, match="smaller than the 7×7 window"):
        ssim(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 5, 5)))
    with pytest.raises(ValueError, match="psnr: images must be two"):
        psnr(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 4, 5)))


def test_reconstruction_report_scores_digits():
    from npdiff.data import load_digits

    x, y = load_digits(16, "test")
    x, y = x[:100], y[:100]
    noisy = x + 0.1 * np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    report = reconstruction_report(x, noisy, y)
    clipped = np.clip(noisy, -1, 1)
    assert report["n_images"] == 100
    assert math.isclose(report["psnr"], float(np.mean(psnr(x, clipped))), rel_tol=1e-12)
    assert report["recon_accuracy"] >= 0.85 and report["original_accuracy"] >= 0.9
    assert reconstruction_report(x, x)["recon_accuracy"] is None
