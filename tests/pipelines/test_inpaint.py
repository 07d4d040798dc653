"""Inpainting: kept pixels are exact, the known region is noised to each step's level (E16), the
loop runs on the running x (E17), and RePaint's resampling moves the fill towards the exact
conditional of Gaussian data."""

import importlib

import numpy as np
import pytest

import npdiff as nd
from npdiff.models import UNet2DModel
from npdiff.pipelines import InpaintPipeline, inpaint, repaint_schedule
from npdiff.schedulers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler
from tests.pipelines.closed_form import GaussianEps

inpaint_module = importlib.import_module("npdiff.pipelines.inpaint")  # the module, not the function

RHO, A0, N = 0.9, 1.5, 20000  # x = (a, b) ~ N(0, [[1, ρ], [ρ, 1]]); keep a = A0, fill b
N_RESAMPLED = 5000  # runs with resampling: the mean's standard error is √(1 − ρ²)/√5000 ≈ 0.006
COV = np.array([[1.0, RHO], [RHO, 1.0]])
KEEP_A = np.array([[1.0, 0.0]], np.float32)  # (1, 2): keep coordinate a


def tiny_unet(classes=None):
    nd.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4, num_class_embeds=classes)


def gaussian_problem(n=N):
    image = np.zeros((n, 2), np.float32)
    image[:, 0] = A0
    return image


@pytest.mark.parametrize("make, jumps, strength, rg", [(lambda: DDPMScheduler(), 1, 1.0, 0.0),
                                                       (lambda: DDIMScheduler(), 3, 1.0, 0.0),
                                                       (lambda: DDIMScheduler(clip_sample=False), 2, 0.5, 0.0),
                                                       (lambda: DDIMScheduler(), 2, 1.0, 1.0)])
def test_kept_pixels_equal_input_exactly(make, jumps, strength, rg):
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    mask = np.zeros((1, 1, 8, 8), np.float32)
    mask[..., :4] = 1.0  # keep the left half
    out = inpaint(tiny_unet(3), make(), image, mask, num_inference_steps=6, class_labels=[0, 1],
                  guidance_scale=2.0, null_class=2, jump_length=2, jump_n_sample=jumps, strength=strength,
                  reconstruction_guidance=rg, generator=1).samples
    np.testing.assert_array_equal(out[..., :4], image[..., :4])
    assert not np.allclose(out[..., 4:], image[..., 4:], atol=0.05)  # the filled half was regenerated
    pipe = InpaintPipeline(tiny_unet(3), make(), null_class=2)  # the diffusers-style call, same numbers
    again = pipe(image=image, mask_image=mask[0], strength=strength, num_inference_steps=6, class_labels=[0, 1],
                 guidance_scale=2.0, jump_length=2, jump_n_sample=jumps, reconstruction_guidance=rg,
                 generator=1).samples
    np.testing.assert_array_equal(again, out)


def test_model_sees_the_known_region_noised_to_each_level():
    """E16: at the model call of timestep t the known coordinate is distributed as q(x_t | x⁰) =
    N(√ᾱ_t a₀, 1 − ᾱ_t). The seed pastes the clean a₀ instead: variance 0, mean a₀."""
    sched = DDPMScheduler(clip_sample=False)
    eps = GaussianEps(np.zeros(2), COV, sched.alphas_cumprod)
    seen = {}

    def predict(x, t):
        seen[int(t)] = x[:, 0].copy()
        return eps(x, t)

    inpaint(None, sched, gaussian_problem(), KEEP_A, num_inference_steps=20, predict=predict, generator=0)
    for t, a in list(seen.items())[1:]:  # the first call sees the initial noise, before any merge
        ab = float(sched.alphas_cumprod[t])
        # mean within 5 standard errors, variance within 5 standard errors of a χ² estimate
        assert abs(a.mean() - np.sqrt(ab) * A0) < 5 * np.sqrt((1 - ab) / N)
        assert abs(a.var() / (1 - ab) - 1) < 5 * np.sqrt(2 / N)

    # the seed's scheme: the clean original pasted at every step
    seen.clear()
    clean = lambda image, alpha_bar, rng: image  # noqa: E731
    original = inpaint_module.known_region
    inpaint_module.known_region = clean
    try:
        inpaint(None, sched, gaussian_problem(), KEEP_A, num_inference_steps=20, predict=predict, generator=0)
    finally:
        inpaint_module.known_region = original
    t_mid = list(seen)[10]
    assert np.all(seen[t_mid] == A0)  # the model is fed x⁰ where it expects √ᾱ x⁰ + √(1−ᾱ) z
    assert 1 - float(sched.alphas_cumprod[t_mid]) > 0.1


def test_seed_loop_that_denoises_x_noisy_every_iteration_discards_its_work():
    """E17: the seed's ``x = denoise_step(x_noisy, t, ...)`` restarts from the initial noisy image
    at every iteration, so its output is one denoising step of pure noise: b keeps the noise's
    unit spread and no correlation with a₀. The pipeline's fill has the conditional's statistics."""
    sched = DDPMScheduler(clip_sample=False)
    sched.set_timesteps(50)
    eps = GaussianEps(np.zeros(2), COV, sched.alphas_cumprod)
    image = gaussian_problem()
    keep = KEEP_A == 1
    rng = np.random.default_rng(0)
    x_noisy = np.where(keep, image, rng.standard_normal(image.shape)).astype(np.float32)
    for t in sched.timesteps:  # the seed's loop
        x = sched.step(eps(x_noisy, t), t, x_noisy, generator=rng).prev_sample
        x = np.where(keep, image, x)
    last = sched.step(eps(x_noisy, 0), 0, x_noisy, generator=np.random.default_rng(5)).prev_sample
    assert abs(x[:, 1].std() - last[:, 1].std()) < 0.05  # only the last iteration counts
    assert x[:, 1].std() > 0.9 and abs(x[:, 1].mean()) < 0.05  # b is still (nearly) pure noise

    good = inpaint(None, sched, image[:N_RESAMPLED], KEEP_A, num_inference_steps=50, predict=eps, generator=0,
                   jump_n_sample=10, jump_length=5).samples[:, 1]
    target_mean, target_std = RHO * A0, np.sqrt(1 - RHO**2)
    assert abs(good.mean() - target_mean) < 0.15 and abs(good.std() - target_std) < 0.06
    assert abs(x[:, 1].mean() - target_mean) > 1.0


@pytest.mark.parametrize("make", [lambda: DDPMScheduler(clip_sample=False), lambda: DDIMScheduler(clip_sample=False)])
def test_resampling_approaches_the_exact_conditional(make):
    """Replacement alone under-uses the known region (the fill's mean falls short of ρ a₀);
    RePaint's resampling shrinks the gap by more than half, at every scheduler."""
    errors = []
    for jumps in (1, 10):
        sched = make()
        eps = GaussianEps(np.zeros(2), COV, sched.alphas_cumprod)
        b = inpaint(None, sched, gaussian_problem(N_RESAMPLED), KEEP_A, num_inference_steps=50, predict=eps, generator=0,
                    jump_length=5, jump_n_sample=jumps).samples[:, 1]
        errors.append(abs(b.mean() - RHO * A0))
    assert errors[1] < 0.5 * errors[0], errors
    assert errors[1] < 0.12


def test_repaint_schedule():
    assert repaint_schedule(4, jump_length=10, jump_n_sample=5) == [0, 1, 2, 3, 4]  # jumps longer than the run
    path = repaint_schedule(6, jump_length=2, jump_n_sample=2)
    # levels L = 5 − p; L = 0 and L = 2 (< 6 − 2) jump back 2 levels once each
    assert path == [0, 1, 2, 3, 2, 1, 2, 3, 4, 5, 4, 3, 4, 5, 6]
    assert set(np.abs(np.diff(path))) == {1}
    long = repaint_schedule(50, jump_length=5, jump_n_sample=3)
    downs = int(np.sum(np.diff(long) == 1))
    assert long[0] == 0 and long[-1] == 50 and downs == 50 + 2 * 5 * 9  # 9 jump levels (0, 5, …, 40)


def test_strength_zero_returns_input_and_bad_arguments():
    image = np.zeros((1, 1, 8, 8), np.float32)
    mask = np.ones((1, 8, 8), np.float32)
    out = inpaint(tiny_unet(), DDIMScheduler(), image, mask, num_inference_steps=4, strength=0.0)
    np.testing.assert_array_equal(out.samples, image)
    with pytest.raises(ValueError, match="only 0 .fill. and 1 .keep."):
        inpaint(tiny_unet(), DDIMScheduler(), image, mask * 0.5, num_inference_steps=4)
    with pytest.raises(ValueError, match="does not fit images"):
        inpaint(tiny_unet(), DDIMScheduler(), image, np.ones((1, 1, 4, 4)), num_inference_steps=4)
    with pytest.raises(ValueError, match="DDPMScheduler or DDIMScheduler"):
        inpaint(tiny_unet(), EulerDiscreteScheduler(), image, mask, num_inference_steps=4)
    with pytest.raises(ValueError, match="timestep_spacing='linspace'"):
        inpaint(tiny_unet(), DDIMScheduler(timestep_spacing="linspace"), image, mask, num_inference_steps=7)
    with pytest.raises(ValueError, match="strength must be in"):
        inpaint(tiny_unet(), DDIMScheduler(), image, mask, num_inference_steps=4, strength=1.5)
    with pytest.raises(ValueError, match="reconstruction_guidance must be >= 0"):
        inpaint(tiny_unet(), DDIMScheduler(), image, mask, num_inference_steps=4, reconstruction_guidance=-1.0)


class GaussianModel:
    """The exact predictor of the Gaussian problem as a differentiable model: out = x P_t (ε) turned
    into ``kind``'s output; P_t = √(1 − ᾱ) (ᾱ Σ + (1 − ᾱ) I)⁻¹ (closed_form.GaussianEps)."""

    def __init__(self, alphas_cumprod, kind="epsilon"):
        self.alphas_cumprod, self.kind = alphas_cumprod, kind

    def matrices(self, t):
        ab = float(self.alphas_cumprod[int(t)])
        p = np.sqrt(1 - ab) * np.linalg.inv(ab * COV + (1 - ab) * np.eye(2))  # ε = x P
        a, b = np.sqrt(ab), np.sqrt(1 - ab)
        return a, b, p, (np.eye(2) - b * p) / a  # x̂₀ = x A

    def __call__(self, x, t):
        a, b, p, x0_map = self.matrices(t[0])
        if self.kind == "epsilon":
            return x @ nd.tensor(p.astype(np.float32))
        if self.kind == "sample":
            return x @ nd.tensor(x0_map.astype(np.float32))
        return x @ nd.tensor((a * p - b * x0_map).astype(np.float32))  # v = √ᾱ ε − √(1 − ᾱ) x₀


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_reconstruction_guidance_is_the_gradient_correction_of_x0(kind):
    """x̃₀ = x̂₀ − w √ᾱ ∇ ½‖m ⊙ (x⁰ − x̂₀)‖² (Ho et al. 2022, eq. 7), for a linear model where
    the gradient is (m ⊙ (x A − x⁰)) Aᵀ exactly; the predictor's output converted back to x̃₀
    must match."""
    from npdiff.diffusion import model_output_to_x0_eps

    sched = DDIMScheduler(prediction_type=kind, clip_sample=False)
    model, t, w = GaussianModel(sched.alphas_cumprod, kind), 500, 1.7
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2)).astype(np.float32)
    image = rng.standard_normal((6, 2)).astype(np.float32)
    predict = inpaint_module.ReconstructionGuidedPredictor(model, sched, image, KEEP_A, w)
    out = predict(x, t)
    a, _, _, x0_map = model.matrices(t)
    x64 = x.astype(np.float64)
    want = x64 @ x0_map - w * a * ((x64 @ x0_map - image) * KEEP_A) @ x0_map.T
    got, _ = model_output_to_x0_eps(out.astype(np.float64), x64, float(sched.alphas_cumprod[t]), kind)
    # float32 products of length 2 with |A| ≲ 1/√ᾱ ≈ 4: a few ulps of values of size ~10
    np.testing.assert_allclose(got, want, atol=1e-4 * (1 + np.abs(want).max()))
    assert not np.allclose(got, x64 @ x0_map, atol=1e-2)  # the correction is not negligible here
    unguided = inpaint_module.ReconstructionGuidedPredictor(model, sched, image, KEEP_A, 0.0)(x, t)
    np.testing.assert_allclose(unguided, np.asarray(model(nd.tensor(x), np.full(6, t)).data))


@pytest.mark.parametrize("make", [lambda: DDPMScheduler(clip_sample=False), lambda: DDIMScheduler(clip_sample=False)])
def test_reconstruction_guidance_pulls_the_fill_to_the_conditional(make):
    """With 10 steps and no resampling, replacement leaves the fill's mean far below ρ a₀; reconstruction
    guidance (w = 2) more than halves the gap, and every model call got a gradient-corrected x̃₀."""
    errors = []
    for w in (0.0, 2.0):
        sched = make()
        b = inpaint(GaussianModel(sched.alphas_cumprod), sched, gaussian_problem(N_RESAMPLED), KEEP_A,
                    num_inference_steps=10, reconstruction_guidance=w, generator=0).samples[:, 1]
        errors.append(abs(b.mean() - RHO * A0))
    # standard error of each mean ≤ 1/√5000 ≈ 0.014, far below the gaps (≈ 0.6 and ≈ 0.2)
    assert errors[1] < 0.5 * errors[0], errors


class PoolingVAE:
    """A stand-in with the AutoencoderKL contract: 2×2 mean-pool encoder, nearest-neighbour decoder."""

    class config:  # noqa: N801 - mirrors ``vae.config.scaling_factor``
        scaling_factor = 0.5

    class _Out:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    def encode(self, x):
        b, c, h, w = x.shape
        z = x.data.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))  # (B, C, H/2, W/2)
        return self._Out(latent_dist=self._Out(mode=lambda: nd.tensor(z)))

    def decode(self, z):
        return self._Out(sample=nd.tensor(z.data.repeat(2, axis=2).repeat(2, axis=3)))


def test_latent_pipeline_keeps_pixels_and_runs_on_latents():
    from npdiff.pipelines import Img2ImgPipeline

    image = np.random.default_rng(3).uniform(-1, 1, (2, 1, 16, 16)).astype(np.float32)
    mask = np.zeros((1, 16, 16), np.float32)
    mask[:, :, :7] = 1.0  # 7 columns: latent column 3 mixes kept and filled pixels, so it is filled
    seen = []
    model = tiny_unet()

    def spy(x, t, class_labels=None):
        seen.append(x.shape)
        return model(x, t)

    out = InpaintPipeline(spy, DDIMScheduler(), vae=PoolingVAE())(image=image, mask_image=mask,
                                                                 num_inference_steps=3, generator=0).samples
    assert seen and all(s == (2, 1, 8, 8) for s in seen)  # the loop ran on 8×8 latents
    np.testing.assert_array_equal(out[..., :7], image[..., :7])  # kept pixels pasted back exactly
    assert out.shape == image.shape
    pipe = Img2ImgPipeline(spy, DDIMScheduler(), vae=PoolingVAE())
    np.testing.assert_array_equal(pipe(image=image, strength=0.0).samples, image)
    assert pipe(image=image, strength=0.5, num_inference_steps=4, generator=0).samples.shape == image.shape
