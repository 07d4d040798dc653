"""Image-to-image (SDEdit, Meng et al. 2022): noise the input part of the way, then denoise it.

Letters: n inference steps t_0 > … > t_{n−1}, s = ``strength`` ∈ [0, 1], k = ⌊n·s⌋ steps run.

    x_{t_{n−k}} = √ᾱ x⁰ + √(1 − ᾱ) z        (scheduler.add_noise: Ho et al. 2020, eq. 4, or x⁰ + σ z)
    then the last k steps of the ordinary sampling loop, under any condition (class, prompt)

s = 0 runs no step and returns the input exactly; s = 1 starts from pure noise
(``init_noise_sigma`` · z, not add_noise at t_0, which would leak √ᾱ_{t_0} x⁰) and is exactly
``sample`` with the same generator. In between, s trades faithfulness to the input (low s)
against following the condition (high s) — SDEdit's realism–faithfulness trade-off (§3.2).
"""

from __future__ import annotations

import numpy as np

from .inpaint import strength_start
from .sampling import (SampleOutput, as_generator, check_conditioning, denoise, denoiser, eval_mode,
                       scheduler_timesteps, step_kwargs_for)


def img2img(model, scheduler, image, strength: float = 0.8, *, num_inference_steps: int | None = None,
            class_labels=None, guidance_scale: float = 1.0, null_class: int | None = None, generator=None,
            predict=None, trajectory_steps=None, progress: bool = False,
            scheduler_kwargs: dict | None = None) -> SampleOutput:
    """SDEdit ``image`` (B, *S) towards the model's condition with ``strength`` s.

    Works with every scheduler (σ-schedulers are started at their step ⌊n(1−s)⌋ with
    ``set_begin_index``, as diffusers does). Other arguments as ``sample``.
    """
    rng = as_generator(generator)
    image = np.asarray(image, dtype=np.float32)
    class_labels = check_conditioning(image.shape[0], class_labels, guidance_scale, null_class)
    timesteps = scheduler_timesteps(scheduler, num_inference_steps)
    begin = strength_start(len(timesteps), strength)
    if begin == len(timesteps):
        return SampleOutput(samples=image.copy())
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    z = rng.standard_normal(image.shape)
    if begin == 0:
        x = z * float(scheduler.init_noise_sigma)  # the very draw ``sample`` makes
    else:
        x = scheduler.add_noise(image, z.astype(np.float32), np.array([timesteps[begin]]))
    step_kwargs = step_kwargs_for(scheduler, rng, scheduler_kwargs)
    predict = predict or denoiser(model, class_labels, guidance_scale, null_class)
    with eval_mode(model):
        return denoise(predict, scheduler, np.asarray(x, dtype=np.float32), timesteps[begin:], step_kwargs,
                       trajectory_steps, progress)


class Img2ImgPipeline:
    """``pipe(image=, strength=, class_labels=, guidance_scale=)``, diffusers' call signature.

    With a VAE the input is encoded (see ``npdiff.pipelines.latents``) and the result decoded;
    ``vae=None`` for pixel models.
    """

    def __init__(self, model, scheduler, vae=None, null_class: int | None = None):
        self.model, self.scheduler, self.vae, self.null_class = model, scheduler, vae, null_class

    def __call__(self, image, strength: float = 0.8, num_inference_steps: int = 50, class_labels=None,
                 guidance_scale: float = 1.0, generator=None, progress: bool = False) -> SampleOutput:
        from .latents import decode_latents, encode_images

        if strength == 0.0:  # no step is run: the input itself, not its VAE round trip
            return SampleOutput(samples=np.asarray(image, dtype=np.float32).copy())
        out = img2img(self.model, self.scheduler, encode_images(self.vae, image), strength,
                      num_inference_steps=num_inference_steps, class_labels=class_labels,
                      guidance_scale=guidance_scale, null_class=self.null_class, generator=generator,
                      progress=progress)
        out.samples = decode_latents(self.vae, out.samples)
        return out
