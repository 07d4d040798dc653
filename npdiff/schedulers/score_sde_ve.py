"""Score-based samplers: the VE-SDE predictor–corrector sampler (Song et al. 2021b) with diffusers'
``ScoreSdeVeScheduler`` semantics, and annealed Langevin dynamics (Song & Ermon 2019).

Here the model output is the score s(x, σ) = ∇_x log p_σ(x) of the data convolved with
N(0, σ² I), not ε (ε = −σ s; ``npdiff.diffusion.score``).

VE SDE: dx = √(d[σ²]/dt) dw, σ(t) = σ_min (σ_max/σ_min)^t (Song et al. 2021b, eq. 30).
Predictor (reverse diffusion, Song et al. 2021b, eq. 47 / Alg. 2), from level σ_i to σ_{i-1}:
    x ← x + (σ_i² − σ_{i-1}²) s(x, σ_i) + √(σ_i² − σ_{i-1}²) z
Corrector (Langevin, Song et al. 2021b, Alg. 4), step ε = 2 (r ‖z‖ / ‖s‖)²:
    x ← x + ε s(x, σ_i) + √(2ε) z
Annealed Langevin (Song & Ermon 2019, Alg. 1), for levels σ_1 > … > σ_L, T steps each:
    α_i = ε σ_i² / σ_L²;   x ← x + (α_i/2) s(x, σ_i) + √α_i z
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from npdiff.backend import broadcast_coef, get_array_module
from npdiff.diffusion import langevin_step
from npdiff.schedulers.base import SchedulerMixin, SchedulerOutput, as_scalar, randn_like


@dataclass
class SdeVeOutput:
    """``prev_sample`` (with noise), ``prev_sample_mean`` (without), ``pred_original_sample`` = x + σ² s (Tweedie)."""

    prev_sample: object
    prev_sample_mean: object
    pred_original_sample: object = None


class ScoreSdeVeScheduler(SchedulerMixin):
    """Predictor–corrector sampling of the variance-exploding SDE (NCSN++).

    Call ``set_timesteps(n)`` then ``set_sigmas(n)``; for each t in ``timesteps`` run
    ``correct_steps`` × ``step_correct`` and then one ``step_pred`` (diffusers' pipeline order).
    """

    order = 1

    def __init__(self, num_train_timesteps: int = 2000, snr: float = 0.15, sigma_min: float = 0.01,
                 sigma_max: float = 1348.0, sampling_eps: float = 1e-5, correct_steps: int = 1):
        self._register_config(locals())
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.init_noise_sigma = sigma_max
        self.timesteps = None
        self.set_sigmas(num_train_timesteps, sigma_min, sigma_max, sampling_eps)

    def set_timesteps(self, num_inference_steps: int, sampling_eps: float | None = None, device=None):
        """Continuous times t from 1 down to ``sampling_eps`` (float32, as diffusers)."""
        eps = self.config.sampling_eps if sampling_eps is None else sampling_eps
        self.timesteps = np.linspace(1.0, eps, num_inference_steps).astype(np.float32)

    def set_sigmas(self, num_inference_steps: int, sigma_min: float | None = None, sigma_max: float | None = None,
                   sampling_eps: float | None = None):
        """σ(t) at the timesteps and the n ascending discrete levels σ_min … σ_max (geometric)."""
        lo = self.config.sigma_min if sigma_min is None else sigma_min
        hi = self.config.sigma_max if sigma_max is None else sigma_max
        if self.timesteps is None:
            self.set_timesteps(num_inference_steps, sampling_eps)
        self.sigmas = lo * (hi / lo) ** self.timesteps.astype(np.float64)  # Song et al. 2021b, eq. 30
        self.discrete_sigmas = np.exp(np.linspace(math.log(lo), math.log(hi), num_inference_steps))

    def _level(self, timestep, batch: int) -> np.ndarray:
        """Index of the discrete level for continuous t: ⌊t (n − 1)⌋ (float32 product, as diffusers)."""
        t = np.float32(as_scalar(timestep))
        idx = int(np.floor(t * np.float32(len(self.timesteps) - 1)))
        return np.full(batch, idx)

    def step_pred(self, model_output, timestep, sample, generator: np.random.Generator | None = None,
                  variance_noise=None, return_dict: bool = True):
        """Reverse-diffusion predictor from σ_i to σ_{i-1} (σ_{-1} = 0)."""
        if self.timesteps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step_pred()")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {model_output.shape} does not match sample shape {sample.shape}")
        # 1. σ_i and the adjacent σ_{i-1}
        idx = self._level(timestep, sample.shape[0])
        sigma = self.discrete_sigmas[idx]
        adjacent = np.where(idx == 0, 0.0, self.discrete_sigmas[np.maximum(idx - 1, 0)])

        # 2. diffusion coefficient g = √(σ_i² − σ_{i-1}²); drift of the reverse SDE is −g² s
        g = broadcast_coef(np.sqrt(sigma**2 - adjacent**2), sample)
        prev_sample_mean = sample + g**2 * model_output

        # 3. add g z
        prev_sample = prev_sample_mean + g * randn_like(sample, generator, variance_noise)
        x0 = sample + broadcast_coef(sigma**2, sample) * model_output  # Tweedie: E[x₀|x] = x + σ² s
        if not return_dict:
            return prev_sample, prev_sample_mean
        return SdeVeOutput(prev_sample, prev_sample_mean, x0)

    def step_correct(self, model_output, sample, generator: np.random.Generator | None = None,
                     variance_noise=None, return_dict: bool = True):
        """One Langevin corrector step with step size set by the target ``snr`` (Song et al. 2021b, Alg. 4)."""
        if self.timesteps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step_correct()")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {model_output.shape} does not match sample shape {sample.shape}")
        xp = get_array_module(sample)
        noise = randn_like(sample, generator, variance_noise)
        B = sample.shape[0]
        # 1. ε = 2 (r ‖z‖ / ‖s‖)², norms per sample then averaged over the batch
        grad_norm = float(xp.linalg.norm(model_output.reshape(B, -1), axis=-1).mean())  # (B, D) → scalar
        noise_norm = float(xp.linalg.norm(noise.reshape(B, -1), axis=-1).mean())
        step_size = (self.config.snr * noise_norm / grad_norm) ** 2 * 2.0
        # 2. x + ε s + √(2ε) z  (= langevin_step with δ = 2ε)
        prev_sample = langevin_step(sample, model_output, 2.0 * step_size, noise)
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def add_noise(self, original_samples, noise, timesteps):
        """x = x₀ + σ_{timesteps} ε with σ from ``discrete_sigmas`` (integer level indices)."""
        sig = self.discrete_sigmas[np.asarray(timesteps).reshape(-1)]
        return original_samples + broadcast_coef(sig, original_samples) * noise


class AnnealedLangevinDynamics(SchedulerMixin):
    """Annealed Langevin dynamics over geometric noise levels (Song & Ermon 2019, Alg. 1, "NCSN").

    ``sigmas`` descend geometrically from ``sigma_max`` to ``sigma_min`` over ``num_noise_levels``;
    ``timesteps`` lists each level index ``steps_per_level`` times. The model output is the score
    s(x, σ_i) with σ_i = ``sigmas[timestep]``.
    """

    order = 1

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 1.0, num_noise_levels: int = 10,
                 steps_per_level: int = 100, epsilon: float = 2e-5):
        self._register_config(locals())
        if not 0 < sigma_min < sigma_max or num_noise_levels < 2 or steps_per_level < 1 or epsilon <= 0:
            raise ValueError("need 0 < sigma_min < sigma_max, num_noise_levels >= 2, steps_per_level >= 1, epsilon > 0; "
                             f"got {dict(self.config)}")
        self.sigmas = np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_noise_levels))
        self.init_noise_sigma = sigma_max
        self.set_timesteps(steps_per_level)

    def set_timesteps(self, steps_per_level: int, device=None):
        self.timesteps = np.repeat(np.arange(len(self.sigmas)), steps_per_level).astype(np.int64)

    def step(self, model_output, timestep, sample, generator: np.random.Generator | None = None,
             variance_noise=None, return_dict: bool = True):
        """x ← x + (α_i/2) s + √α_i z with α_i = ε σ_i²/σ_L² (Song & Ermon 2019, Alg. 1, lines 3-6)."""
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {model_output.shape} does not match sample shape {sample.shape}")
        i = int(as_scalar(timestep))
        sigma = float(self.sigmas[i])
        alpha = self.config.epsilon * sigma**2 / float(self.sigmas[-1]) ** 2
        prev_sample = langevin_step(sample, model_output, alpha, randn_like(sample, generator, variance_noise))
        x0 = sample + sigma**2 * model_output  # Tweedie's formula
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
