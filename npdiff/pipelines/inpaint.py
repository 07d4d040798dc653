"""Inpainting with any trained model: replace the known region at every step, with RePaint resampling.

Letters: B batch, S item shape (C, H, W), m the mask (1 = keep, 0 = fill; white = keep in a
mask image, as in the seed post's figure), x⁰ the input image, n inference steps.

No inpainting-specific training (Lugmayr et al. 2022, "RePaint", Alg. 1). The reverse chain
runs on the whole image; after every step t → t' the known region is overwritten by the
input noised to the level the step landed on:

    x_{t'}^known   = √ᾱ_{t'} x⁰ + √(1 − ᾱ_{t'}) z,  z ~ N(0, I)          (Ho et al. 2020, eq. 4)
    x_{t'}^unknown = scheduler.step(model(x_t, t), t, x_t)              (DDPM or DDIM step)
    x_{t'}         = m ⊙ x_{t'}^known + (1 − m) ⊙ x_{t'}^unknown        (RePaint eq. 8)

At the end (ᾱ = 1) the known region is x⁰ itself, so kept pixels equal the input exactly.

The seed post's pseudo-code gets two things wrong (docs/math.md, errata E16 and E17):
it pastes the *clean* original into the known region at every step, so the model sees a
clean region next to a noisy one, an input it never saw in training; and its loop calls
``denoise_step(x_noisy, ...)`` on the initial noisy image at every iteration instead of on
the running x, so all but the last iteration are thrown away. Both are shown wrong by
``tests/pipelines/test_inpaint.py``.

Resampling (RePaint §4.2): the replacement alone harmonises poorly, since the unknown region
at t' never saw the known region's noise at t'. RePaint goes back up ``jump_length`` steps
with the forward transition

    x_t = √(ᾱ_t / ᾱ_{t'}) x_{t'} + √(1 − ᾱ_t / ᾱ_{t'}) z                  (q(x_t | x_{t'}), Ho eq. 2 composed)

and denoises them again, ``jump_n_sample`` times in all (``jump_n_sample = 1``: no resampling).
Each resample costs ``jump_length`` extra model calls per ``jump_length`` steps.

Reconstruction guidance (Ho et al. 2022, "Video Diffusion Models", §3.1, eq. 7): replacement
alone tells the unknown region about the known one only through x_t, where early on the known
region is mostly noise, so the coarse shape of the fill is chosen before it can agree with the
kept half. ``reconstruction_guidance = w`` corrects the model's clean-image estimate with the
gradient of how badly it reproduces the known pixels,

    x̃₀ = x̂₀(x_t) − w √ᾱ_t ∇_{x_t} ½ ‖m ⊙ (x⁰ − x̂₀(x_t))‖²

and steps with x̃₀ (and the ε̃ it implies at this x_t) instead of the model's output. The
gradient goes through the denoiser with npdiff's autograd: one backward per step.
"""

from __future__ import annotations

import numpy as np

from ..autograd import Tensor, set_grad_enabled
from ..diffusion import model_output_to_x0_eps, training_target
from ..schedulers import DDIMScheduler, DDPMScheduler
from .sampling import (SampleOutput, as_generator, check_conditioning, denoiser, eval_mode, no_grad,
                       scheduler_timesteps, step_kwargs_for)


def repaint_schedule(num_steps: int, jump_length: int = 10, jump_n_sample: int = 1) -> list:
    """The positions visited by RePaint's time schedule (Lugmayr et al. 2022, §4.2).

    Position p ∈ 0 … n is "x at the p-th inference timestep" (p = n: the clean image). The
    list starts at 0 and ends at n; consecutive entries differ by ±1 (+1 a denoising step,
    −1 a forward re-noising). Counting levels L = n − 1 − p, each level L that is a multiple
    of ``jump_length`` with L < n − ``jump_length`` jumps back up ``jump_length`` levels
    ``jump_n_sample − 1`` times, as RePaint's reference schedule does.
    """
    if num_steps < 1 or jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"num_steps, jump_length and jump_n_sample must be >= 1, got {num_steps}, "
                         f"{jump_length}, {jump_n_sample}")
    jumps_left = {level: jump_n_sample - 1 for level in range(0, num_steps - jump_length, jump_length)}
    p, path = 0, [0]
    while p < num_steps:
        p += 1
        path.append(p)
        level = num_steps - 1 - p
        while jumps_left.get(level, 0) > 0:  # go back up jump_length steps, then down again
            jumps_left[level] -= 1
            for _ in range(jump_length):
                p -= 1
                path.append(p)
            for _ in range(jump_length):
                p += 1
                path.append(p)
    return path


def landing_alpha_bars(scheduler, timesteps) -> np.ndarray:
    """ᾱ at each inference position: ᾱ_{t_k} for k < n, then the level the last step lands on.

    The step from t_k must land on t_{k+1} for the known region to be noised to the right level;
    DDIM's step goes to t − ⌊T/n⌋, which the "leading" and "trailing" spacings satisfy.
    """
    if not isinstance(scheduler, (DDPMScheduler, DDIMScheduler)):
        raise ValueError(f"inpainting needs a DDPMScheduler or DDIMScheduler (steps between ᾱ levels), got "
                         f"{type(scheduler).__name__}")
    ts = [int(t) for t in timesteps]
    if isinstance(scheduler, DDIMScheduler):
        stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        lands = [t - stride for t in ts]
        final = scheduler.final_alpha_cumprod
    else:
        lands = [scheduler.previous_timestep(t) for t in ts]
        final = 1.0
    if lands[:-1] != ts[1:]:
        raise ValueError(f"the scheduler's steps do not land on its next timesteps (timestep_spacing="
                         f"{scheduler.config.timestep_spacing!r}); use 'leading' or 'trailing' for inpainting")
    ab = scheduler.alphas_cumprod
    return np.array([float(ab[t]) for t in ts] + [final if lands[-1] < 0 else float(ab[lands[-1]])])


def known_region(image: np.ndarray, alpha_bar: float, rng: np.random.Generator) -> np.ndarray:
    """x_t^known = √ᾱ x⁰ + √(1 − ᾱ) z: the input at the noise level ᾱ (x⁰ itself, exactly, at ᾱ = 1).

    The seed post pastes x⁰ at every level instead (errata E16)."""
    if alpha_bar == 1.0:
        return image
    return np.sqrt(alpha_bar) * image + np.sqrt(1.0 - alpha_bar) * rng.standard_normal(image.shape)


def check_mask(mask, image: np.ndarray) -> np.ndarray:
    """A {0, 1} float32 mask broadcastable to ``image`` (B, C, …): (B or 1, 1 or C, …)."""
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim == image.ndim - 1:
        m = m[None]  # one mask for the whole batch
    if m.ndim != image.ndim or m.shape[0] not in (1, image.shape[0]) or m.shape[1] not in (1, image.shape[1]) \
            or m.shape[2:] != image.shape[2:]:
        raise ValueError(f"mask of shape {np.shape(mask)} does not fit images of shape {image.shape}: expected "
                         f"(B or 1, 1 or C, {', '.join(map(str, image.shape[2:]))})")
    if not np.all((m == 0) | (m == 1)):
        raise ValueError("mask must hold only 0 (fill) and 1 (keep); threshold a soft mask first")
    return m


def strength_start(num_steps: int, strength: float) -> int:
    """Index of the first timestep run for ``strength`` (diffusers: ⌊n · strength⌋ steps are run)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return num_steps - min(int(num_steps * strength), num_steps)


class ReconstructionGuidedPredictor:
    """``predict(x, t)``: the model's output with x̂₀ replaced by the reconstruction-guided x̃₀ (module doc).

    model:   ``model(x, t, class_labels=None) -> Tensor`` predicting the scheduler's prediction_type.
    image:   (B, *S) the input x⁰;  mask: its {0, 1} mask (1 = known), broadcastable to image.
    weight:  w ≥ 0 (0: the model's output unchanged, no backward pass).
    class_labels, guidance_scale, null_class: as ``sample`` (classifier-free guidance is
    differentiated through both passes).
    """

    def __init__(self, model, scheduler, image, mask, weight: float, class_labels=None, guidance_scale: float = 1.0,
                 null_class: int | None = None):
        if weight < 0:
            raise ValueError(f"reconstruction_guidance must be >= 0, got {weight}")
        self.model, self.scheduler, self.weight = model, scheduler, float(weight)
        self.image, self.mask = np.asarray(image, np.float32), np.asarray(mask, np.float32)
        self.class_labels, self.guidance_scale, self.null_class = class_labels, float(guidance_scale), null_class

    def _forward(self, xt: Tensor, t_batch: np.ndarray) -> Tensor:
        if self.class_labels is None:
            return self.model(xt, t_batch)
        out = self.model(xt, t_batch, class_labels=self.class_labels)
        if self.guidance_scale == 1.0:
            return out
        out_null = self.model(xt, t_batch, class_labels=np.full_like(self.class_labels, self.null_class))
        return out_null + self.guidance_scale * (out - out_null)

    def __call__(self, x, t):
        x = np.asarray(x, dtype=np.float32)
        t_batch = np.full((x.shape[0],), int(t), dtype=np.int64)
        ab = float(self.scheduler.alphas_cumprod[int(t)])
        kind = self.scheduler.config.prediction_type
        if self.weight == 0.0:
            with no_grad():
                return np.asarray(self._forward(Tensor(x), t_batch).data)
        a, b = float(np.sqrt(ab)), float(np.sqrt(1.0 - ab))  # Python floats: numpy scalars would swallow a Tensor
        xt = Tensor(x, requires_grad=True)
        params = [p for p in getattr(self.model, "parameters", lambda: [])() if p.requires_grad]
        for p in params:  # only ∂/∂x_t is wanted: leave the weights off the tape
            p.requires_grad = False
        try:
            with set_grad_enabled(True):
                out = self._forward(xt, t_batch)
                # x̂₀ as an affine function of the output (the tape needs Tensor arithmetic, not numpy)
                x0_hat = {"epsilon": lambda: (xt - b * out) * (1.0 / a), "sample": lambda: out,
                          "v_prediction": lambda: a * xt - b * out}[kind]()
                residual = (x0_hat - Tensor(self.image)) * Tensor(self.mask)
                (0.5 * (residual * residual).sum()).backward()
        finally:
            for p in params:
                p.requires_grad = True
        out = np.asarray(out.data)
        x0, _ = model_output_to_x0_eps(out, x, ab, kind)
        x0 = x0 - self.weight * a * np.asarray(xt.grad.data)
        eps = (x - a * x0) / b
        return training_target(x0, eps, ab, kind).astype(np.float32)


def inpaint(model, scheduler, image, mask, *, num_inference_steps: int | None = None, strength: float = 1.0,
            class_labels=None, guidance_scale: float = 1.0, null_class: int | None = None, jump_length: int = 10,
            jump_n_sample: int = 1, reconstruction_guidance: float = 0.0, generator=None, predict=None,
            progress: bool = False) -> SampleOutput:
    """Fill the region where ``mask`` is 0, keeping ``image`` where it is 1.

    image:      (B, *S) in the model's data space (digits: [-1, 1]).
    mask:       (B or 1, 1 or C, H, W) or (1 or C, H, W), values 0 / 1.
    strength:   1 starts from pure noise; s < 1 from the input noised to the step ⌊n·s⌋ before
                the end (as diffusers' inpainting pipelines), keeping more of the masked content.
    jump_length, jump_n_sample: RePaint resampling (``jump_n_sample = 1``: off).
    reconstruction_guidance: w of the reconstruction-guided x̃₀ (module docstring; 0: off).
    predict:    ``predict(x, t) -> output`` instead of ``model`` with class labels / guidance.
    Returns SampleOutput with ``samples`` (B, *S); kept pixels equal ``image`` bit for bit.
    """
    rng = as_generator(generator)
    image = np.asarray(image, dtype=np.float32)
    m = check_mask(mask, image)
    class_labels = check_conditioning(image.shape[0], class_labels, guidance_scale, null_class)
    timesteps = scheduler_timesteps(scheduler, num_inference_steps)
    alpha_bar = landing_alpha_bars(scheduler, timesteps)  # (n + 1,)
    begin = strength_start(len(timesteps), strength)
    if begin == len(timesteps):
        return SampleOutput(samples=image.copy())
    step_kwargs = step_kwargs_for(scheduler, rng)
    if predict is None and reconstruction_guidance:
        predict = ReconstructionGuidedPredictor(model, scheduler, image, m, reconstruction_guidance, class_labels,
                                                guidance_scale, null_class)
    predict = predict or denoiser(model, class_labels, guidance_scale, null_class)
    keep = m == 1

    # 1. x at the first position: pure noise (strength 1) or the input noised to that level
    if begin == 0:
        x = (rng.standard_normal(image.shape) * float(scheduler.init_noise_sigma)).astype(np.float32)
    else:
        x = scheduler.add_noise(image, rng.standard_normal(image.shape).astype(np.float32),
                                np.array([timesteps[begin]])).astype(np.float32)
    path = [begin + p for p in repaint_schedule(len(timesteps) - begin, jump_length, jump_n_sample)]
    moves = zip(path[:-1], path[1:])
    if progress:
        from tqdm.auto import tqdm

        moves = tqdm(list(moves), desc="inpainting", unit="step", leave=False, disable=None)
    with eval_mode(model), no_grad():
        for p, q in moves:
            if q == p + 1:
                # 2. one reverse step t_p → t_q on the whole image
                t = timesteps[p]
                out = predict(scheduler.scale_model_input(x, t), t)
                x = np.asarray(scheduler.step(out, t, x, **step_kwargs).prev_sample, dtype=np.float32)
                # 3. the known region, forward-noised to the level just reached (clean at the end)
                ab = 1.0 if q == len(timesteps) else alpha_bar[q]
                x = np.where(keep, known_region(image, ab, rng), x).astype(np.float32)
            else:
                # 4. RePaint: back up one step with q(x_{t_q} | x_{t_p}), ᾱ_q < ᾱ_p
                ratio = alpha_bar[q] / alpha_bar[p]
                x = (np.sqrt(ratio) * x + np.sqrt(1.0 - ratio) * rng.standard_normal(x.shape)).astype(np.float32)
    return SampleOutput(samples=x)


class InpaintPipeline:
    """A model, a scheduler and optionally a VAE: ``pipe(image=, mask_image=, strength=)`` as diffusers'.

    Pixel models (``vae=None``) work in image space. With a VAE (``AutoencoderKL``), images
    are encoded to latents (posterior mode × ``scaling_factor``), the mask is brought to the
    latent size (a latent is kept only where all of its pixels are kept), the loop runs on
    latents, and the decoded result gets the input's pixels pasted back where the mask is 1,
    so kept pixels are exact in both cases.
    """

    def __init__(self, model, scheduler, vae=None, null_class: int | None = None):
        self.model, self.scheduler, self.vae, self.null_class = model, scheduler, vae, null_class

    def __call__(self, image, mask_image, strength: float = 1.0, num_inference_steps: int = 50,
                 class_labels=None, guidance_scale: float = 1.0, generator=None, jump_length: int = 10,
                 jump_n_sample: int = 1, reconstruction_guidance: float = 0.0,
                 progress: bool = False) -> SampleOutput:
        from .latents import decode_latents, encode_images, latent_mask

        image = np.asarray(image, dtype=np.float32)
        m = check_mask(mask_image, image)
        z = encode_images(self.vae, image)
        out = inpaint(self.model, self.scheduler, z, latent_mask(m, z.shape), num_inference_steps=num_inference_steps,
                      strength=strength, class_labels=class_labels, guidance_scale=guidance_scale,
                      null_class=self.null_class, jump_length=jump_length, jump_n_sample=jump_n_sample,
                      reconstruction_guidance=reconstruction_guidance, generator=generator, progress=progress)
        if self.vae is not None:
            out.samples = np.where(m == 1, image, decode_latents(self.vae, out.samples)).astype(np.float32)
        return out
