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


class _RoundTrip:
    """A stand-in VAE whose round trip decode(mode(encode(x))) is ``f(x)``."""

    def __init__(self, f):
        self.f = f

    def encode(self, x):
        dist = type("Dist", (), {"mode": staticmethod(lambda: np.asarray(x))})
        return type("Out", (), {"latent_dist": dist})()

    def decode(self, z):
        return type("Out", (), {"sample": self.f(z)})()


def test_attribute_ceiling_of_lossless_and_object_losing_round_trips():
    """A lossless round trip scores exactly what the real images score; one that paints the second
    object's quadrant with the background (a VAE that loses objects) keeps the one-object images
    only: count and all-correct fall to their share, and so does the second object's position."""
    from npdiff.data import make_shapes
    from npdiff.training.vae_trainer import attribute_ceiling

    d = make_shapes(120, "test")
    lossless = attribute_ceiling(_RoundTrip(lambda z: z), d.images, d.attributes, batch=50)
    assert lossless["real"]["all_correct"] > 0.95 and lossless["n_samples"] == 120
    assert {k: v for k, v in lossless.items() if k != "real"} == lossless["real"]
    two = d.attributes[:, 1, 0] >= 0

    erased = d.images.copy()
    for i in np.flatnonzero(two):
        row, col = divmod(int(d.attributes[i, 1, 3]), 2)
        background = np.median(d.images[i][:, ~d.masks[i].any(axis=0)], axis=1)  # (3,)
        erased[i][:, 16 * row:16 * row + 16, 16 * col:16 * col + 16] = background[:, None, None]
    lossy = attribute_ceiling(_RoundTrip(lambda z: erased), d.images, d.attributes, batch=len(d))  # one batch
    one_share = 1.0 - two.mean()
    assert abs(lossy["count_accuracy"] - one_share) <= 0.05 and lossy["all_correct"] <= one_share + 1e-12
    n_objects = len(d) + two.sum()
    assert abs(lossy["position_accuracy"] - len(d) / n_objects) <= 0.05
