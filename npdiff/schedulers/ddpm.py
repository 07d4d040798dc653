"""DDPM ancestral sampling (Ho et al. 2020, Alg. 2), with diffusers' ``DDPMScheduler`` semantics.

Notation (t, t' = consecutive inference timesteps, t' < t; ᾱ_{t'} = 1 past the last step):

    ᾱ_t        ``alpha_prod_t``          1 − ᾱ_t   ``beta_prod_t`` (diffusers' name: not Π β!)
    α_t^eff    ᾱ_t / ᾱ_{t'}              β_t^eff   1 − α_t^eff   (= β_t when t' = t − 1)
    β̃_t        (1 − ᾱ_{t'}) / (1 − ᾱ_t) · β_t^eff     posterior variance (eq. 7)

With strided inference timesteps the same formulas hold with the "effective" α/β between the
two timesteps (Nichol & Dhariwal 2021, §4: respacing keeps ᾱ and recomputes β).
"""

from __future__ import annotations

import numpy as np

from npdiff.backend import get_array_module
from npdiff.diffusion import PREDICTION_TYPES, VARIANCE_TYPES, model_output_to_x0_eps
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


class DDPMScheduler(SchedulerMixin):
    """Denoising diffusion probabilistic model sampler (Ho et al. 2020).

    Options:
    - beta_schedule: one of `linear`, `scaled_linear`, `squaredcos_cap_v2`, `sigmoid`; ``trained_betas`` overrides it.
    - prediction_type: one of `epsilon`, `sample`, `v_prediction`.
    - variance_type: one of `fixed_small`, `fixed_small_log`, `fixed_large`, `fixed_large_log`, `learned`, `learned_range`.
    - timestep_spacing: one of `linspace`, `leading`, `trailing`.

    ``fixed_small`` is β̃_t (Ho et al. 2020, §3.2, σ² = β̃), ``fixed_large`` is β_t; ``learned``
    takes the variance from the second half of the model's channels; ``learned_range`` takes an
    interpolation weight in [−1, 1] between log β̃_t and log β_t (Nichol & Dhariwal 2021, eq. 15).
    """

    order = 1

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, variance_type: str = "fixed_small",
                 clip_sample: bool = True, prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, clip_sample_range: float = 1.0,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False):
        self._register_config(locals())
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        self._set_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                           rescale_betas_zero_snr)
        self.init_noise_sigma = 1.0
        self.variance_type = variance_type
        self.custom_timesteps = False
        self.num_inference_steps = None
        self.timesteps = np.arange(num_train_timesteps)[::-1].astype(np.int64)

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None):
        """Choose the inference timesteps: ``num_inference_steps`` spaced by the config, or a custom descending list."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps")
        T = self.config.num_train_timesteps
        if timesteps is not None:
            ts = np.asarray(timesteps, dtype=np.int64)
            if np.any(np.diff(ts) >= 0):
                raise ValueError(f"custom timesteps must be strictly descending, got {ts.tolist()}")
            if ts[0] >= T:
                raise ValueError(f"custom timesteps must start below num_train_timesteps={T}, got {ts[0]}")
            self.custom_timesteps = True
            self.num_inference_steps = len(ts)
        else:
            ts = spaced_timesteps(self.config.timestep_spacing, num_inference_steps, T,
                                  self.config.steps_offset).astype(np.int64)
            self.custom_timesteps = False
            self.num_inference_steps = num_inference_steps
        self.timesteps = ts

    def previous_timestep(self, timestep) -> int:
        """The next timestep of the inference schedule after ``timestep`` (−1 after the last)."""
        t = int(as_scalar(timestep))
        if self.custom_timesteps or self.num_inference_steps:
            idx = np.nonzero(self.timesteps == t)[0]
            if len(idx) == 0:
                raise ValueError(f"timestep {t} is not in scheduler.timesteps")
            i = int(idx[0])
            return -1 if i == len(self.timesteps) - 1 else int(self.timesteps[i + 1])
        return t - 1

    def _variance_terms(self, t: int, prev_t: int):
        """(ᾱ_t, ᾱ_{t'}, β_t^eff, β̃_t) in float64."""
        ab_t = float(self.alphas_cumprod[t])
        ab_prev = float(self.alphas_cumprod[prev_t]) if prev_t >= 0 else 1.0
        beta_eff = 1.0 - ab_t / ab_prev
        # Ho et al. 2020, eq. 7, floored at 1e-20 so its log stays finite (diffusers does the same)
        beta_tilde = max((1.0 - ab_prev) / (1.0 - ab_t) * beta_eff, 1e-20)
        return ab_t, ab_prev, beta_eff, beta_tilde

    def step(self, model_output, timestep, sample, generator: np.random.Generator | None = None,
             variance_noise=None, return_dict: bool = True):
        """x_t → x_{t'} ~ N(μ̃(x_t, x̂₀), σ_t²) (Ho et al. 2020, Alg. 2, line 4, via eq. 7).

        Shapes: sample (B, C, …); model_output (B, C, …), or (B, 2C, …) for learned variances.
        """
        xp = get_array_module(sample)
        t = int(as_scalar(timestep))
        prev_t = self.previous_timestep(t)
        C = sample.shape[1] if sample.ndim > 1 else None
        predicted_variance = None
        if self.variance_type in ("learned", "learned_range") and C is not None and model_output.shape[1] == 2 * C:
            model_output, predicted_variance = model_output[:, :C], model_output[:, C:]
        elif model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {model_output.shape} does not match sample shape {sample.shape}")

        # 1. ᾱ_t, ᾱ_{t'}, effective α_t, β_t between the two inference timesteps
        ab_t, ab_prev, beta_eff, beta_tilde = self._variance_terms(t, prev_t)
        alpha_eff = 1.0 - beta_eff

        # 2. x̂₀ from the model output (Ho et al. 2020, eq. 15; Salimans & Ho 2022, §4)
        x0, _ = model_output_to_x0_eps(model_output, sample, ab_t, self.config.prediction_type)

        # 3. clip or dynamically threshold x̂₀ (Saharia et al. 2022, §2.3)
        x0 = clip_or_threshold(x0, self.config)

        # 4. posterior mean μ̃_t = √ᾱ_{t'} β_t / (1−ᾱ_t) x̂₀ + √α_t (1−ᾱ_{t'}) / (1−ᾱ_t) x_t (Ho et al. 2020, eq. 7)
        coef_x0 = ab_prev**0.5 * beta_eff / (1.0 - ab_t)
        coef_xt = alpha_eff**0.5 * (1.0 - ab_prev) / (1.0 - ab_t)
        prev_sample = coef_x0 * x0 + coef_xt * sample

        # 5. add σ_t z for t > 0 (Ho et al. 2020, Alg. 2, line 4: no noise at the last step)
        if t > 0:
            noise = randn_like(sample, generator, variance_noise)
            vt = self.variance_type
            if vt in ("fixed_small", "fixed_small_log"):
                std = beta_tilde**0.5
            elif vt in ("fixed_large", "fixed_large_log"):
                std = beta_eff**0.5
            elif vt == "learned":
                std = xp.sqrt(predicted_variance) if predicted_variance is not None else beta_tilde**0.5
            else:  # learned_range: Nichol & Dhariwal 2021, eq. 15, v ∈ [−1, 1] → frac ∈ [0, 1]
                if predicted_variance is None:
                    raise ValueError("variance_type='learned_range' needs a model_output with 2*C channels")
                frac = (predicted_variance + 1.0) / 2.0
                log_var = frac * float(np.log(beta_eff)) + (1.0 - frac) * float(np.log(beta_tilde))
                std = xp.exp(0.5 * log_var)
            prev_sample = prev_sample + std * noise

        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
