"""DDIM inversion editing: run the deterministic DDIM sampler backwards to x_T, then forwards again.

Letters: n inference steps, t_0 < t_1 < … < t_{n−1} (the inverse scheduler's ascending order).

DDIM with η = 0 is a discretised ODE (Song et al. 2021a, §4.3, eq. 13), so it can be run from
the data end: each step of ``DDIMInverseScheduler`` takes x_{t'} to

    x_t = √ᾱ_t x̂₀ + √(1 − ᾱ_t) ε̂,   x̂₀ = (x_{t'} − √(1 − ᾱ_{t'}) ε̂) / √ᾱ_{t'},   ε̂ = ε_θ(x_{t'}, t)

with the model evaluated at the target timestep t on the sample at t' (diffusers'
``DDIMInverseScheduler`` pipelines do the same; the exact ε̂(x_t, t) is unknown before x_t is).
Sampling x_T back with ``DDIMScheduler`` (η = 0, same steps, same condition, guidance 1)
reconstructs the input up to that O(1/n) mismatch; sampling it under another class or prompt
edits the image while keeping what the noise code x_T carries (pose, stroke width).
Guidance > 1 during inversion amplifies the mismatch (Mokady et al. 2023, §3), so the round
trip is exact only at guidance 1.
"""

from __future__ import annotations

import numpy as np

from ..schedulers import DDIMInverseScheduler, DDIMScheduler
from .sampling import SampleOutput, check_conditioning, denoise, denoiser, eval_mode, no_grad, scheduler_timesteps


def ddim_invert(model, inverse_scheduler, image, *, num_inference_steps: int | None = None, class_labels=None,
                guidance_scale: float = 1.0, null_class: int | None = None, predict=None,
                progress: bool = False) -> np.ndarray:
    """x_T from ``image`` (B, *S) with a ``DDIMInverseScheduler``; the model as in ``sample``."""
    if not isinstance(inverse_scheduler, DDIMInverseScheduler):
        raise ValueError(f"ddim_invert needs a DDIMInverseScheduler, got {type(inverse_scheduler).__name__}")
    x = np.asarray(image, dtype=np.float32)
    class_labels = check_conditioning(x.shape[0], class_labels, guidance_scale, null_class)
    timesteps = scheduler_timesteps(inverse_scheduler, num_inference_steps)
    predict = predict or denoiser(model, class_labels, guidance_scale, null_class)
    steps = range(len(timesteps))
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="inverting", unit="step", leave=False, disable=None)
    with eval_mode(model), no_grad():
        for i in steps:
            t = timesteps[i]
            x = np.asarray(inverse_scheduler.step(predict(x, t), t, x).prev_sample, dtype=np.float32)
    return x


def ddim_edit(model, scheduler, inverse_scheduler, image, *, num_inference_steps: int = 50, source_labels=None,
              target_labels=None, guidance_scale: float = 1.0, null_class: int | None = None,
              source_predict=None, target_predict=None, progress: bool = False) -> SampleOutput:
    """Invert ``image`` under ``source_labels`` (guidance 1), regenerate under ``target_labels``.

    ``scheduler`` must be a ``DDIMScheduler`` (run with η = 0); ``guidance_scale`` applies to the
    regeneration only. Target = source reconstructs the input (the round trip). ``samples`` of
    the result is the edit; its ``trajectory`` is None.
    """
    if not isinstance(scheduler, DDIMScheduler):
        raise ValueError(f"ddim_edit regenerates with a DDIMScheduler (η = 0), got {type(scheduler).__name__}")
    x_T = ddim_invert(model, inverse_scheduler, image, num_inference_steps=num_inference_steps,
                      class_labels=source_labels, null_class=null_class, predict=source_predict, progress=progress)
    target_labels = check_conditioning(x_T.shape[0], target_labels, guidance_scale, null_class)
    timesteps = scheduler_timesteps(scheduler, num_inference_steps)
    predict = target_predict or denoiser(model, target_labels, guidance_scale, null_class)
    with eval_mode(model):
        return denoise(predict, scheduler, x_T, timesteps, progress=progress)
