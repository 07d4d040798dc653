"""DDIM sampling and inversion (Song, Meng & Ermon 2021), with diffusers' semantics.

Notation (t → t' is one inference step, t' < t; past the last step ᾱ_{t'} = ``final_alpha_cumprod``):

    ᾱ_t, ᾱ_{t'}    ``alpha_prod_t``, ``alpha_prod_t_prev``   (1 − ᾱ_t is diffusers' ``beta_prod_t``)
    σ_t(η)         η √((1−ᾱ_{t'})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t'})              (DDIM eq. 16)

Generalised step (DDIM eq. 12):

    x_{t'} = √ᾱ_{t'} x̂₀ + √(1 − ᾱ_{t'} − σ_t²) ε̂ + σ_t z

η = 1 gives σ_t² = β̃_t, the DDPM posterior variance, and the DDPM step; η = 0 is the
deterministic probability-flow-like sampler that ``DDIMInverseScheduler`` runs backwards.
"""

from __future__ import annotations

import numpy as np

from npdiff.diffusion import PREDICTION_TYPES, model_output_to_x0_eps, predict_eps_from_x0
from npdiff.schedulers.base import (
    SchedulerMixin,
    SchedulerOutput,
    TIMESTEP_SPACINGS,
    as_scalar,
    check_choice,
    clip_or_threshold,
    randn_like,
    spaced_timesteps,
)


class DDIMScheduler(SchedulerMixin):
    """Denoising diffusion implicit models (Song et al. 2021a).

    Options:
    - beta_schedule: one of `linear`, `scaled_linear`, `squaredcos_cap_v2`, `sigmoid`; ``trained_betas`` overrides it.
    - prediction_type: one of `epsilon`, `sample`, `v_prediction`.
    - timestep_spacing: one of `linspace`, `leading`, `trailing`.

    ``set_alpha_to_one``: past the last step use ᾱ = 1 (the clean image) rather than ᾱ_0.
    """

    order = 1

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, clip_sample: bool = True,
                 set_alpha_to_one: bool = True, steps_offset: int = 0, prediction_type: str = "epsilon",
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 clip_sample_range: float = 1.0, sample_max_value: float = 1.0,
                 timestep_spacing: str = "leading", rescale_betas_zero_snr: bool = False):
        self._register_config(locals())
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        self._set_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                           rescale_betas_zero_snr)
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.alphas_cumprod[0])
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = np.arange(num_train_timesteps)[::-1].astype(np.int64)

    def set_timesteps(self, num_inference_steps: int, device=None):
        self.num_inference_steps = num_inference_steps
        self.timesteps = spaced_timesteps(self.config.timestep_spacing, num_inference_steps,
                                          self.config.num_train_timesteps, self.config.steps_offset).astype(np.int64)

    def _get_variance(self, t: int, prev_t: int) -> float:
        """β̃ between t and t': (1−ᾱ_{t'})/(1−ᾱ_t) · (1 − ᾱ_t/ᾱ_{t'}) (DDIM eq. 16 with η = 1)."""
        ab_t = self.alphas_cumprod[t]
        ab_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        return float((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev))

    def step(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = False,
             generator: np.random.Generator | None = None, variance_noise=None, return_dict: bool = True):
        """x_t → x_{t'} by DDIM eq. 12. t' = t − ⌊T/n⌋ as in diffusers (exact for `leading` spacing)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {model_output.shape} does not match sample shape {sample.shape}")
        t = int(as_scalar(timestep))
        # 1. previous timestep t' and ᾱ_t, ᾱ_{t'}
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
        ab_t = float(self.alphas_cumprod[t])
        ab_prev = float(self.alphas_cumprod[prev_t]) if prev_t >= 0 else self.final_alpha_cumprod

        # 2. x̂₀ and ε̂ from the model output (DDIM eq. 9; Salimans & Ho 2022, §4)
        x0, eps = model_output_to_x0_eps(model_output, sample, ab_t, self.config.prediction_type)

        # 3. clip or threshold x̂₀
        x0 = clip_or_threshold(x0, self.config)

        # 4. σ_t(η) (DDIM eq. 16)
        std = eta * self._get_variance(t, prev_t) ** 0.5

        # 5. optionally recompute ε̂ from the clipped x̂₀ (as in Glide)
        if use_clipped_model_output:
            eps = predict_eps_from_x0(sample, x0, ab_t)

        # 6. direction pointing to x_t and the deterministic part (DDIM eq. 12)
        prev_sample = ab_prev**0.5 * x0 + max(1.0 - ab_prev - std**2, 0.0) ** 0.5 * eps

        # 7. add σ_t z when η > 0
        if eta > 0:
            prev_sample = prev_sample + std * randn_like(sample, generator, variance_noise)

        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


class DDIMInverseScheduler(SchedulerMixin):
    """DDIM inversion: the η = 0 DDIM step run from x_{t'} up to x_t (Song et al. 2021a, eq. 13;
    Mokady et al. 2023 "null-text inversion", §3).

    Options:
    - beta_schedule: one of `linear`, `scaled_linear`, `squaredcos_cap_v2`, `sigmoid`; ``trained_betas`` overrides it.
    - prediction_type: one of `epsilon`, `sample`, `v_prediction`.
    - timestep_spacing: one of `leading`, `trailing`.

    Timesteps ascend. ``step(model_output, t, x)`` treats x as the sample at t' = t − ⌊T/n⌋
    (ᾱ_{t'} = ``initial_alpha_cumprod`` when t' < 0) and returns the sample at t:
        x_t = √ᾱ_t x̂₀ + √(1−ᾱ_t) ε̂,  with x̂₀ = (x_{t'} − √(1−ᾱ_{t'}) ε̂)/√ᾱ_{t'}.
    Given the same ε̂, it is the exact inverse of ``DDIMScheduler.step`` with η = 0.
    """

    order = 1

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, clip_sample: bool = True,
                 set_alpha_to_one: bool = True, steps_offset: int = 0, prediction_type: str = "epsilon",
                 clip_sample_range: float = 1.0, timestep_spacing: str = "leading",
                 rescale_betas_zero_snr: bool = False):
        self._register_config(locals())
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, ("leading", "trailing"))
        self._set_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                           rescale_betas_zero_snr)
        self.initial_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.alphas_cumprod[0])
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = np.arange(num_train_timesteps).astype(np.int64)

    def set_timesteps(self, num_inference_steps: int, device=None):
        self.num_inference_steps = num_inference_steps
        self.timesteps = spaced_timesteps(self.config.timestep_spacing, num_inference_steps,
                                          self.config.num_train_timesteps,
                                          self.config.steps_offset)[::-1].astype(np.int64)

    def step(self, model_output, timestep, sample, return_dict: bool = True):
        """x_{t'} → x_t, the η = 0 DDIM update with the roles of t and t' swapped."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {model_output.shape} does not match sample shape {sample.shape}")
        T = self.config.num_train_timesteps
        t_to = int(as_scalar(timestep))
        # 1. source timestep t' (clamped to T−1 as diffusers) and ᾱ at both ends
        t_from = min(t_to - T // self.num_inference_steps, T - 1)
        ab_from = float(self.alphas_cumprod[t_from]) if t_from >= 0 else self.initial_alpha_cumprod
        ab_to = float(self.alphas_cumprod[t_to])

        # 2. x̂₀ and ε̂ at the source
        x0, eps = model_output_to_x0_eps(model_output, sample, ab_from, self.config.prediction_type)

        # 3. clip x̂₀
        x0 = clip_or_threshold(x0, self.config)

        # 4. re-noise deterministically to t (DDIM eq. 12 with σ = 0, solved forwards)
        prev_sample = ab_to**0.5 * x0 + (1.0 - ab_to) ** 0.5 * eps
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
