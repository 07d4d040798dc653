"""Euler and Euler-ancestral samplers in σ (Karras et al. 2022, Alg. 2 with S_churn; k-diffusion's
``sample_euler_ancestral``), with diffusers' ``EulerDiscreteScheduler`` /
``EulerAncestralDiscreteScheduler`` semantics. Notation in ``sigmas.py``.

Euler:      d = (x − x̂₀)/σ̂;  x' = x + d (σ_next − σ̂)                (EDM Alg. 2, lines 5-8)
            with churn σ̂ = σ(1 + γ), x ← x + √(σ̂² − σ²) z first.
Ancestral:  σ_up = √(σ_next² (σ² − σ_next²)/σ²), σ_down = √(σ_next² − σ_up²);
            x' = x + d (σ_down − σ) + σ_up z — the DDPM posterior step in VE coordinates.
"""

from __future__ import annotations

import numpy as np

from npdiff.diffusion import PREDICTION_TYPES
from npdiff.schedulers.base import (
    SchedulerOutput,
    TIMESTEP_SPACINGS,
    check_choice,
    randn_like,
)
from npdiff.schedulers.sigmas import (
    SigmaSchedulerMixin,
    check_same_shape,
    karras_sigmas,
    sigma_to_t,
    x0_from_sigma_output,
)


class EulerDiscreteScheduler(SigmaSchedulerMixin):
    """Euler's method on the probability-flow ODE in σ (Karras et al. 2022, Alg. 2).

    Options:
    - beta_schedule: one of `linear`, `scaled_linear`, `squaredcos_cap_v2`, `sigmoid`; ``trained_betas`` overrides it.
    - prediction_type: one of `epsilon`, `sample`, `v_prediction`.
    - timestep_spacing: one of `linspace`, `leading`, `trailing`.
    - final_sigmas_type: `zero` or `sigma_min`; use_karras_sigmas (EDM eq. 5, ρ = 7).

    Not reproduced: exponential/beta sigmas, ``interpolation_type="log_linear"`` and continuous
    timesteps (passing them raises ValueError).
    """

    order = 1

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 interpolation_type: str = "linear", use_karras_sigmas: bool = False,
                 use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False,
                 sigma_min: float | None = None, sigma_max: float | None = None,
                 timestep_spacing: str = "linspace", timestep_type: str = "discrete", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False, final_sigmas_type: str = "zero"):
        self._register_config(locals())
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        check_choice("interpolation_type", interpolation_type, ("linear",))
        check_choice("timestep_type", timestep_type, ("discrete",))
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"))
        if use_exponential_sigmas or use_beta_sigmas:
            raise ValueError("use_exponential_sigmas / use_beta_sigmas are not supported; use use_karras_sigmas")
        self._set_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                           rescale_betas_zero_snr)
        self.use_karras_sigmas = use_karras_sigmas
        self._init_train_sigmas(num_train_timesteps, rescale_betas_zero_snr)

    def set_timesteps(self, num_inference_steps: int, device=None):
        """σ at the spaced timesteps (linear interpolation in t), or Karras σ's mapped back to fractional t."""
        cfg = self.config
        ts, sigmas, sig_train = self._spaced_sigmas(num_inference_steps)
        if cfg.use_karras_sigmas:
            lo = cfg.sigma_min if cfg.sigma_min is not None else sigmas[-1]
            hi = cfg.sigma_max if cfg.sigma_max is not None else sigmas[0]
            sigmas = karras_sigmas(lo, hi, num_inference_steps)
            ts = sigma_to_t(sigmas, np.log(sig_train)).astype(np.float32)
        last = sig_train[0] if cfg.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigmas, [last]])
        self.timesteps = ts

    def step(self, model_output, timestep, sample, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0, generator: np.random.Generator | None = None,
             variance_noise=None, return_dict: bool = True):
        """One Euler step from σ_i to σ_{i+1}, with optional churn (EDM Alg. 2)."""
        check_same_shape(model_output, sample)
        if self._step_index is None:
            self._init_step_index(timestep)
        # 1. σ and the churned σ̂ = σ (1 + γ) (EDM Alg. 2, lines 4-6)
        sigma = float(self.sigmas[self._step_index])
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1.0)
        if gamma > 0:
            noise = randn_like(sample, generator, variance_noise) * s_noise
            sample = sample + noise * (sigma_hat**2 - sigma**2) ** 0.5

        # 2. x̂₀ (EDM Table 1 denoiser D(x; σ))
        x0 = x0_from_sigma_output(model_output, sample, sigma_hat if self.config.prediction_type == "epsilon"
                                  else sigma, self.config.prediction_type)

        # 3. ODE derivative d = (x − x̂₀)/σ̂ and the Euler update (EDM Alg. 2, lines 7-8)
        derivative = (sample - x0) / sigma_hat
        prev_sample = sample + derivative * (float(self.sigmas[self._step_index + 1]) - sigma_hat)

        self._step_index += 1
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


class EulerAncestralDiscreteScheduler(SigmaSchedulerMixin):
    """Ancestral Euler sampling: a deterministic Euler step to σ_down, then fresh noise σ_up.

    Options:
    - beta_schedule: one of `linear`, `scaled_linear`, `squaredcos_cap_v2`, `sigmoid`; ``trained_betas`` overrides it.
    - prediction_type: one of `epsilon`, `sample`, `v_prediction`.
    - timestep_spacing: one of `linspace`, `leading`, `trailing`.
    """

    order = 1

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 timestep_spacing: str = "linspace", steps_offset: int = 0, rescale_betas_zero_snr: bool = False):
        self._register_config(locals())
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        self._set_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                           rescale_betas_zero_snr)
        self._init_train_sigmas(num_train_timesteps, rescale_betas_zero_snr)

    def set_timesteps(self, num_inference_steps: int, device=None):
        """σ at the spaced timesteps (linear interpolation in t), then a final 0."""
        ts, sigmas, _ = self._spaced_sigmas(num_inference_steps)
        self.sigmas = np.concatenate([sigmas, [0.0]])
        self.timesteps = ts

    def step(self, model_output, timestep, sample, generator: np.random.Generator | None = None,
             variance_noise=None, return_dict: bool = True):
        """σ → σ_next via an Euler step to σ_down plus σ_up z."""
        check_same_shape(model_output, sample)
        if self._step_index is None:
            self._init_step_index(timestep)
        # 1. σ, σ_next and the ancestral split σ_next² = σ_down² + σ_up²
        sigma = float(self.sigmas[self._step_index])
        sigma_next = float(self.sigmas[self._step_index + 1])
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5

        # 2. x̂₀ from the model output
        x0 = x0_from_sigma_output(model_output, sample, sigma, self.config.prediction_type)

        # 3. deterministic Euler step to σ_down
        derivative = (sample - x0) / sigma
        prev_sample = sample + derivative * (sigma_down - sigma)

        # 4. add σ_up z
        if sigma_up > 0 or variance_noise is not None:
            prev_sample = prev_sample + randn_like(sample, generator, variance_noise) * sigma_up

        self._step_index += 1
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
