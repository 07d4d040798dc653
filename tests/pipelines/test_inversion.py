"""DDIM inversion on Gaussian data, where the exact predictor is known: the round trip reconstructs
the input with an O(1/n) error, and regenerating under another condition moves the image by the
difference of the conditions' means (the probability-flow map between two Gaussians of one covariance)."""

import numpy as np
import pytest

import npdiff as nd
from npdiff.models import UNet2DModel
from npdiff.pipelines import ddim_edit, ddim_invert
from npdiff.schedulers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler
from tests.pipelines.closed_form import GaussianEps

D = 16  # 1 × 4 × 4 "images"
_rng = np.random.default_rng(0)
_A = _rng.standard_normal((D, D)) * 0.3
COV = _A @ _A.T + 0.05 * np.eye(D)  # correlated pixels, unit-ish scale
MEAN = _rng.uniform(-0.5, 0.5, D)


def round_trip_error(steps, n=200):
    sched, inverse = DDIMScheduler(clip_sample=False), DDIMInverseScheduler(clip_sample=False)
    eps = GaussianEps(MEAN, COV, sched.alphas_cumprod)
    x0 = eps.sample(n, np.random.default_rng(1)).reshape(n, 1, 4, 4)
    out = ddim_edit(None, sched, inverse, x0, num_inference_steps=steps, source_predict=eps, target_predict=eps)
    return float(np.abs(out.samples - x0).mean())


def test_round_trip_reconstructs_with_first_order_error():
    e50, e200 = round_trip_error(50), round_trip_error(200)
    assert e50 <= 0.05  # the bar, on data whose mean |x| is about 1
    assert e200 < e50 / 2.5  # first order in 1/n: 4× the steps, about 4× smaller


def test_editing_to_another_mean_shifts_the_image_by_the_mean_difference():
    """For N(μ₁, Σ) → N(μ₂, Σ) the probability-flow ODE's map is x ↦ x − μ₁ + μ₂ (both flows are
    affine with the same linear part), so the edit keeps everything but the mean."""
    sched, inverse = DDIMScheduler(clip_sample=False), DDIMInverseScheduler(clip_sample=False)
    target_mean = MEAN + np.linspace(-1, 1, D)
    source = GaussianEps(MEAN, COV, sched.alphas_cumprod)
    target = GaussianEps(target_mean, COV, sched.alphas_cumprod)
    x0 = source.sample(200, np.random.default_rng(2)).reshape(200, 1, 4, 4)
    out = ddim_edit(None, sched, inverse, x0, num_inference_steps=50, source_predict=source,
                    target_predict=target).samples
    expected = x0 + (target_mean - MEAN).reshape(1, 1, 4, 4)
    assert np.abs(out - expected).mean() < 0.05
    assert np.abs(x0 - expected).mean() > 0.4  # the edit moved the image


def test_inversion_ends_near_the_prior():
    """x_T of real data is (nearly) N(0, I): mean 0 and unit variance per coordinate, within sampling error."""
    sched = DDIMInverseScheduler(clip_sample=False)
    eps = GaussianEps(MEAN, COV, sched.alphas_cumprod)
    x0 = eps.sample(4000, np.random.default_rng(3)).reshape(4000, 1, 4, 4)
    xT = ddim_invert(None, sched, x0, num_inference_steps=50, predict=eps).reshape(4000, D)
    assert np.abs(xT.mean(0)).max() < 5 / np.sqrt(4000) + 0.02
    assert np.abs(xT.std(0) - 1).max() < 0.08


def test_model_path_and_errors():
    nd.manual_seed(0)
    model = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                        layers_per_block=1, norm_num_groups=4, num_class_embeds=4)
    x0 = np.random.default_rng(0).uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    out = ddim_edit(model, DDIMScheduler(clip_sample=False), DDIMInverseScheduler(clip_sample=False), x0,
                    num_inference_steps=4, source_labels=[0, 1], target_labels=[2, 2], guidance_scale=2.0,
                    null_class=3)
    assert out.samples.shape == x0.shape and np.all(np.isfinite(out.samples))
    with pytest.raises(ValueError, match="needs a DDIMInverseScheduler"):
        ddim_invert(model, DDIMScheduler(), x0, num_inference_steps=4, class_labels=[0, 1])
    with pytest.raises(ValueError, match="regenerates with a DDIMScheduler"):
        ddim_edit(model, DDPMScheduler(), DDIMInverseScheduler(), x0, num_inference_steps=4, source_labels=[0, 1])
